// CPU-only helpers: an exp that the compiler vectorises, and the row loops built on it. The state they produce and
// merge is the shared LseState of common/row_math.h.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "../common/row_math.h"

namespace rlaifv {
namespace cpu {

// exp(x) for x <= ~0 in float, branch-free so loops over it vectorise (std::exp is a libm call and does not).
// Cephes-style: x = k ln2 + r, |r| <= ln2/2, degree-6 polynomial; relative error ~1e-7. Below -87.3 returns 0.
inline float exp_vec(float x) {
  const float lo = -87.3f;
  const float xc = x < lo ? lo : x;
  const float kf = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  float r = xc - kf * 0.693359375f;
  r = r - kf * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t k = static_cast<int32_t>(kf);
  const uint32_t bits = static_cast<uint32_t>(k + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < lo ? 0.0f : p * scale;
}

inline double exp_vec(double x) { return std::exp(x); }

constexpr int64_t kChunk = 1024;

// Online log-sum-exp of row[0:V] * inv_temp: one read of the row from memory; each chunk is converted into a small
// buffer (L1), its max taken, then its exp-sum, and merged into the running state.
template <class T, class Acc = typename AccOf<T>::type>
LseState<Acc> row_lse(const T* row, int64_t V, Acc inv_temp) {
  alignas(64) Acc buf[kChunk];
  LseState<Acc> st = lse_empty<Acc>();
  for (int64_t c0 = 0; c0 < V; c0 += kChunk) {
    const int64_t n = std::min(kChunk, V - c0);
    Acc cm = neg_inf<Acc>();
    int nan = 0;
#pragma omp simd reduction(max : cm) reduction(| : nan)
    for (int64_t i = 0; i < n; ++i) {
      const Acc v = static_cast<Acc>(load(row + c0 + i)) * inv_temp;
      buf[i] = v;
      cm = v > cm ? v : cm;
      nan |= (v != v);
    }
    if (nan || cm == std::numeric_limits<Acc>::infinity()) {
      st.nan = true;  // the row's result is NaN whatever follows
      return st;
    }
    if (cm == neg_inf<Acc>()) continue;
    Acc cs = Acc(0);
#pragma omp simd reduction(+ : cs)
    for (int64_t i = 0; i < n; ++i) cs += exp_vec(buf[i] - cm);
    st = lse_merge<Acc>(st, LseState<Acc>{cm, cs, false});
  }
  return st;
}

// dx[v] = coef * (1[v == label] - exp(x_v * inv_temp - lse)) * inv_temp for v in [0, V); a label < 0 stands for one
// in no column of this row (a block of the vocabulary): no one-hot term.
template <class T, class TOut, class Acc = typename AccOf<T>::type>
void row_grad(const T* row, TOut* dx, int64_t V, int64_t label, Acc coef, Acc inv_temp, Acc lse) {
  // read the label logit first: with an in-place backward dx aliases row
  const Acc x_label = label >= 0 ? static_cast<Acc>(load(row + label)) : Acc(0);
#pragma omp simd
  for (int64_t v = 0; v < V; ++v) {
    const Acc x = static_cast<Acc>(load(row + v)) * inv_temp;
    store(dx + v, softmax_grad<Acc>(exp_vec(x - lse), false, coef, inv_temp));  // the label entry follows
  }
  if (label >= 0) store(dx + label, token_grad<Acc>(x_label, true, coef, inv_temp, lse));
}

template <class TOut>
void row_zero(TOut* dx, int64_t V) {
#pragma omp simd
  for (int64_t v = 0; v < V; ++v) store(dx + v, 0.0f);
}

}  // namespace cpu
}  // namespace rlaifv
