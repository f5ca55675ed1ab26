"""The unknown-class scores and the AUROC that compares them."""

import math

import pytest
import torch

from orchestration import plugins
from orchestration.predict import image_scores
from swwae_lightning.module import SWWAEModule
from swwae_lightning.unknown_scores import auroc, energy_score, probability_score, reconstruction_score

plugins.declare_all_settings()


def test_auroc_is_the_share_of_unknown_known_pairs_ranked_right_with_ties_counting_half():
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 1.0
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 0.0
    assert auroc(torch.tensor([1.0, 1.0]), torch.tensor([1.0])) == 0.5
    # 0.8 beats all three known; 0.35 beats 0.1, loses to 0.4 and ties 0.35: (3 + 1.5) / 6
    assert auroc(torch.tensor([0.1, 0.4, 0.35]), torch.tensor([0.8, 0.35])) == 0.75
    assert math.isnan(auroc(torch.tensor([]), torch.tensor([1.0])))


def test_the_scores_rise_as_an_image_looks_less_like_a_known_class():
    logits = torch.tensor([[9.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    probability, energy = probability_score(logits), energy_score(logits)
    assert probability[0] < probability[1] == pytest.approx(math.log(3))
    assert energy.tolist() == pytest.approx([-math.log(math.exp(9) + 2), -(1 + math.log(3)), -math.log(3)])
    images = torch.zeros(2, 1, 4, 4)
    rebuilt = torch.stack([torch.zeros(1, 4, 4), torch.full((1, 4, 4), 0.5)])
    assert reconstruction_score(rebuilt, images).tolist() == [0.0, 0.25]


def test_a_model_whose_decoder_never_trained_gives_no_reconstruction_score():
    x = torch.randn(3, 1, 8, 8)
    with_decoder = SWWAEModule.from_settings("4C3-MP2-FC8", 1, 8, 4).eval()
    logits, scores = image_scores(with_decoder, x)
    assert set(scores) == {"probability", "energy", "reconstruction"} and scores["reconstruction"].shape == (3,)
    assert torch.equal(logits, with_decoder(x))
    encoder_only = SWWAEModule.from_settings("4C3-MP2-FC8", 1, 8, 4, lambda_rec=0.0, lambda_mid=0.0).eval()
    assert set(image_scores(encoder_only, x)[1]) == {"probability", "energy"}


def test_unknown_detection_reads_the_pools_truth_and_gives_each_scores_auroc(tmp_path):
    from experiments import unknown_detection

    tree = tmp_path / "tree"
    (tree / "unlabeled").mkdir(parents=True)
    truth = [("unlabeled/0.png", "0", "known"), ("unlabeled/1.png", "7", "unknown"), ("unlabeled/2.png", "1", "known")]
    truth += [("unlabeled/3.png", "9", "unknown")]
    (tree / ".pool-truth.csv").write_text("path,class,kind\n" + "".join(",".join(t) + "\n" for t in truth))
    header = "path,predicted,probability,top_3,unknown_score,label,minus_log_probability,energy,"
    header += "reconstruction_error,one_vs_all\n"
    rows = [  # the probability score ranks both unknowns above both knowns, energy 3 of 4 pairs, reconstruction none
        ("0.png", "0", "0.99", "0.01", "0", "-9", "0.5"),
        ("1.png", "4", "0.97", "0.03", "4", "-1", "0.1"),
        ("2.png", "1", "0.90", "0.02", "1", "-8", "0.4"),
        ("3.png", "4", "0.60", "0.50", "unknown", "-8.5", "0.2"),
    ]  # the chosen score's column (unknown_score) is not read: each score has its own
    lines = [f"{tree / 'unlabeled' / r[0]},{r[1]},{r[2]},x,0,{r[4]},{r[3]},{r[5]},{r[6]},\n" for r in rows]
    (tmp_path / "pool.csv").write_text(header + "".join(lines))
    out = tmp_path / "detection.json"
    assert unknown_detection.main([str(tmp_path / "pool.csv"), "--tree", str(tree), "--out", str(out)]) == 0
    result = __import__("json").loads(out.read_text())
    assert result == {
        "pool": 4,
        "unknown": 2,
        "auroc_probability": 1.0,
        "auroc_energy": 0.75,
        "auroc_reconstruction": 0.0,
        "unknown_confident_share": 0.5,  # 1.png, a 7, came back a 4 at p 0.97
        "unknown_labelled_known_share": 0.5,
    }
    everything_unknown = [(path, cls, "unknown") for path, cls, _ in truth]
    (tree / ".pool-truth.csv").write_text("path,class,kind\n" + "".join(",".join(t) + "\n" for t in everything_unknown))
    assert unknown_detection.main([str(tmp_path / "pool.csv"), "--tree", str(tree), "--out", str(out)]) == 0
    assert not any(k.startswith("auroc") for k in __import__("json").loads(out.read_text()))  # no known to rank against
    (tmp_path / "other.csv").write_text(header + f"{tmp_path / 'x.png'},0,0.5,x,1,0,1,-1,0.1,\n")
    assert unknown_detection.main([str(tmp_path / "other.csv"), "--tree", str(tree)]) == 2  # not a pool file
