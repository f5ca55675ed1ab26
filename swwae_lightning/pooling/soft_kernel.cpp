// Soft what/where pooling and its bilinear unpooling as single passes over contiguous
// (N, H, W) float/double maps on the CPU, forward and backward.
//
// The same formulas as the tensor implementation in soft.py, in the same order of
// operations, so the two agree to rounding. One pass per direction replaces the
// dozen full-resolution tensor passes that each direction takes there.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <type_traits>
#include <vector>

namespace {

// Windows are K x K, K a compile-time constant for the common sizes (the loops unroll)
// or 0 for any other size, given at run time; kMaxWindow bounds the per-window arrays.
constexpr int64_t kMaxWindow = 16;

// Calls f(corner, o) for every k x k window of n (H, W) = (h k, w k) planes, the planes split
// over ATen's threads: corner indexes the window's first pixel in the (N, H, W) map and o the
// window in the (N, h, w) outputs.
template <typename F>
void for_each_window(int64_t n, int64_t h, int64_t w, int64_t k, F&& f) {
  const int64_t W = w * k, plane = h * k * W;
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p)
      for (int64_t i = 0; i < h; ++i)
        for (int64_t j = 0; j < w; ++j) f(p * plane + i * k * W + j * k, (p * h + i) * w + j);
  });
}

// Pass 1 of the forward: beta (z - window max), floored at min_exponent, into x (N, H, W).
template <typename T, int K>
void pool_exponents(const T* z, T* x, int64_t n, int64_t h, int64_t w, int64_t k_runtime, T beta, T min_exponent) {
  const int64_t k = K > 0 ? K : k_runtime, W = w * k;
  for_each_window(n, h, w, k, [&](int64_t corner, int64_t) {
    const T* zw = z + corner;
    T* xw = x + corner;
    T peak = zw[0];
    for (int64_t a = 0; a < k; ++a)
      for (int64_t b = 0; b < k; ++b) {
        const T v = zw[a * W + b];
        if (v > peak || std::isnan(v)) peak = v;
      }
    for (int64_t a = 0; a < k; ++a)
      for (int64_t b = 0; b < k; ++b) {
        const T e = (zw[a * W + b] - peak) * beta;
        xw[a * W + b] = e < min_exponent ? min_exponent : e;  // NaN stays NaN
      }
  });
}

// Pass 2, after exp: normalizes the weights in place (the backward needs them) and
// writes what = sum w z and the position (sum w dy, sum w dx), each (N, h, w).
template <typename T, int K>
void pool_moments(const T* z, T* weights, T* what, T* pos_y, T* pos_x, int64_t n, int64_t h, int64_t w,
                  int64_t k_runtime) {
  const int64_t k = K > 0 ? K : k_runtime, W = w * k;
  for_each_window(n, h, w, k, [&](int64_t corner, int64_t o) {
    const T* zw = z + corner;
    T* ww = weights + corner;
    T total = 0;
    for (int64_t a = 0; a < k; ++a)
      for (int64_t b = 0; b < k; ++b) total += ww[a * W + b];
    T mean = 0, y = 0, x = 0, column[K > 0 ? K : kMaxWindow] = {};
    for (int64_t a = 0; a < k; ++a) {
      T row = 0;
      for (int64_t b = 0; b < k; ++b) {
        const T weight = ww[a * W + b] / total;
        ww[a * W + b] = weight;
        mean += weight * zw[a * W + b];
        row += weight;
        column[b] += weight;
      }
      y += row * static_cast<T>(a);
    }
    for (int64_t b = 0; b < k; ++b) x += column[b] * static_cast<T>(b);
    what[o] = mean;
    pos_y[o] = y;
    pos_x[o] = x;
  });
}

// grad_i = w_i * (beta g_what z_i + g_what (1 - beta what) - beta (g_y y + g_x x) + beta g_y dy_i + beta g_x dx_i)
template <typename T, int K>
void pool_backward(const T* z, const T* weights, const T* what, const T* pos_y, const T* pos_x, const T* g_what,
                   const T* g_y, const T* g_x, T* grad, int64_t n, int64_t h, int64_t w, int64_t k_runtime, T beta) {
  const int64_t k = K > 0 ? K : k_runtime, W = w * k;
  for_each_window(n, h, w, k, [&](int64_t corner, int64_t o) {
    const T gw = g_what[o], gy = g_y[o], gx = g_x[o];
    const T per_window = gw - beta * (gw * what[o] + gy * pos_y[o] + gx * pos_x[o]);
    const T slope = beta * gw;
    for (int64_t a = 0; a < k; ++a)
      for (int64_t b = 0; b < k; ++b) {
        const int64_t at = corner + a * W + b;
        const T bias = per_window + beta * gy * static_cast<T>(a) + beta * gx * static_cast<T>(b);
        grad[at] = (bias + z[at] * slope) * weights[at];
      }
  });
}

// tent(j) = max(0, 1 - |j - position|) for the k offsets of one window (a NaN position
// gives NaN weights, as in the tensor implementation), and its slope in the position,
// sign(j - position) inside the tent and 0 outside, written without data-dependent branches.
template <typename T, int K>
void tent(T position, int64_t k_runtime, T* weight, T* slope) {
  const int64_t k = K > 0 ? K : k_runtime;
  for (int64_t j = 0; j < k; ++j) {
    const T distance = static_cast<T>(j) - position;
    const T t = static_cast<T>(1) - std::abs(distance);
    weight[j] = t < 0 ? static_cast<T>(0) : t;
    if (slope != nullptr)
      slope[j] = static_cast<T>(t > 0) * (static_cast<T>(distance > 0) - static_cast<T>(distance < 0));
  }
}

template <typename T, int K>
void unpool_forward(const T* what, const T* pos_y, const T* pos_x, T* out, int64_t n, int64_t h, int64_t w,
                    int64_t k_runtime) {
  const int64_t k = K > 0 ? K : k_runtime, W = w * k;
  for_each_window(n, h, w, k, [&](int64_t corner, int64_t o) {
    T wy[K > 0 ? K : kMaxWindow], wx[K > 0 ? K : kMaxWindow];
    tent<T, K>(pos_y[o], k, wy, static_cast<T*>(nullptr));
    tent<T, K>(pos_x[o], k, wx, static_cast<T*>(nullptr));
    T* ow = out + corner;
    for (int64_t a = 0; a < k; ++a) {
      const T scaled = what[o] * wy[a];
      for (int64_t b = 0; b < k; ++b) ow[a * W + b] = scaled * wx[b];
    }
  });
}

template <typename T, int K>
void unpool_backward(const T* grad_out, const T* what, const T* pos_y, const T* pos_x, T* grad_what, T* grad_y,
                     T* grad_x, int64_t n, int64_t h, int64_t w, int64_t k_runtime) {
  const int64_t k = K > 0 ? K : k_runtime, W = w * k;
  for_each_window(n, h, w, k, [&](int64_t corner, int64_t o) {
    constexpr int64_t size = K > 0 ? K : kMaxWindow;
    T wy[size], wx[size], sy[size], sx[size], along_y[size] = {};
    tent<T, K>(pos_y[o], k, wy, sy);
    tent<T, K>(pos_x[o], k, wx, sx);
    const T* gw = grad_out + corner;
    T g_what = 0, g_y = 0, g_x = 0;
    for (int64_t a = 0; a < k; ++a) {
      T along_x = 0;
      for (int64_t b = 0; b < k; ++b) {
        along_x += gw[a * W + b] * wx[b];
        along_y[b] += gw[a * W + b] * wy[a];
      }
      g_what += along_x * wy[a];
      g_y += along_x * sy[a];
    }
    for (int64_t b = 0; b < k; ++b) g_x += along_y[b] * sx[b];
    grad_what[o] = g_what;
    grad_y[o] = g_y * what[o];
    grad_x[o] = g_x * what[o];
  });
}

void check_map(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.dim() == 3, name, " must be a contiguous (N, H, W) CPU map");
}

// Calls f with the window size as a template argument: 2 and 3 unrolled, others at run time.
template <typename F>
void with_window(int64_t k, F&& f) {
  TORCH_CHECK(k >= 1 && k <= kMaxWindow, "soft pooling window ", k, " is outside 1..", kMaxWindow);
  if (k == 2) {
    f(std::integral_constant<int, 2>{});
  } else if (k == 3) {
    f(std::integral_constant<int, 3>{});
  } else {
    f(std::integral_constant<int, 0>{});
  }
}

}  // namespace

// Entry points: (N, H, W) maps in, (N, h, w) maps out; the Python side reshapes.
std::vector<torch::Tensor> pool_forward_entry(torch::Tensor z, int64_t k, double beta, double min_exponent) {
  check_map(z, "z");
  const int64_t n = z.size(0), h = z.size(1) / k, w = z.size(2) / k;
  auto weights = torch::empty_like(z);
  auto what = z.new_empty({n, h, w});
  auto pos_y = z.new_empty({n, h, w});
  auto pos_x = z.new_empty({n, h, w});
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "soft_pool_forward", [&] {
    with_window(k, [&](auto K) {
      pool_exponents<scalar_t, decltype(K)::value>(z.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(), n, h, w, k,
                                  static_cast<scalar_t>(beta), static_cast<scalar_t>(min_exponent));
      weights.exp_();  // ATen's vectorized exp
      pool_moments<scalar_t, decltype(K)::value>(z.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(), what.data_ptr<scalar_t>(),
                                pos_y.data_ptr<scalar_t>(), pos_x.data_ptr<scalar_t>(), n, h, w, k);
    });
  });
  return {what, pos_y, pos_x, weights};
}

torch::Tensor pool_backward_entry(torch::Tensor z, torch::Tensor weights, torch::Tensor what, torch::Tensor pos_y,
                                  torch::Tensor pos_x, torch::Tensor g_what, torch::Tensor g_y, torch::Tensor g_x,
                                  int64_t k, double beta) {
  check_map(z, "z");
  const int64_t n = z.size(0), h = z.size(1) / k, w = z.size(2) / k;
  auto grad = torch::empty_like(z);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "soft_pool_backward", [&] {
    with_window(k, [&](auto K) {
      pool_backward<scalar_t, decltype(K)::value>(z.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(), what.data_ptr<scalar_t>(),
                                 pos_y.data_ptr<scalar_t>(), pos_x.data_ptr<scalar_t>(), g_what.data_ptr<scalar_t>(),
                                 g_y.data_ptr<scalar_t>(), g_x.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), n, h,
                                 w, k, static_cast<scalar_t>(beta));
    });
  });
  return grad;
}

torch::Tensor unpool_forward_entry(torch::Tensor what, torch::Tensor pos_y, torch::Tensor pos_x, int64_t k) {
  check_map(what, "what");
  const int64_t n = what.size(0), h = what.size(1), w = what.size(2);
  auto out = what.new_empty({n, h * k, w * k});
  AT_DISPATCH_FLOATING_TYPES(what.scalar_type(), "soft_unpool_forward", [&] {
    with_window(k, [&](auto K) {
      unpool_forward<scalar_t, decltype(K)::value>(what.data_ptr<scalar_t>(), pos_y.data_ptr<scalar_t>(), pos_x.data_ptr<scalar_t>(),
                                  out.data_ptr<scalar_t>(), n, h, w, k);
    });
  });
  return out;
}

std::vector<torch::Tensor> unpool_backward_entry(torch::Tensor grad_out, torch::Tensor what, torch::Tensor pos_y,
                                                 torch::Tensor pos_x, int64_t k) {
  check_map(grad_out, "grad_out");
  const int64_t n = what.size(0), h = what.size(1), w = what.size(2);
  auto grad_what = torch::empty_like(what), grad_y = torch::empty_like(what), grad_x = torch::empty_like(what);
  AT_DISPATCH_FLOATING_TYPES(what.scalar_type(), "soft_unpool_backward", [&] {
    with_window(k, [&](auto K) {
      unpool_backward<scalar_t, decltype(K)::value>(grad_out.data_ptr<scalar_t>(), what.data_ptr<scalar_t>(),
                                   pos_y.data_ptr<scalar_t>(), pos_x.data_ptr<scalar_t>(),
                                   grad_what.data_ptr<scalar_t>(), grad_y.data_ptr<scalar_t>(),
                                   grad_x.data_ptr<scalar_t>(), n, h, w, k);
    });
  });
  return {grad_what, grad_y, grad_x};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("pool_forward", &pool_forward_entry);
  m.def("pool_backward", &pool_backward_entry);
  m.def("unpool_forward", &unpool_forward_entry);
  m.def("unpool_backward", &unpool_backward_entry);
}
