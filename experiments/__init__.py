"""Studies built on the framework: the where ablation and the equivariance of soft pooling."""
