// Per-row math shared by the CPU and CUDA kernels.
//
// Everything here is inline `__host__ __device__` so that the CPU build (and so the CPU test suite) runs the very
// code the GPU kernels run: element loads and stores for bf16/fp16, the online log-sum-exp state and its merge, the
// token log-prob and gradient formulas, and the log-sum-exp over a small token set (yes/no extraction).
#pragma once

#include <cstdint>
#include <cmath>
#include <limits>

#if defined(__CUDACC__)
#define RF_HD __host__ __device__ __forceinline__
#else
#define RF_HD inline
#endif

namespace rlaifv {

// Dtype codes shared with Python (rlaifv_fast/ops/_native.py keeps the same table).
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };
enum class IndexDType : int { kInt32 = 0, kInt64 = 1 };

struct bf16_t { uint16_t bits; };
struct fp16_t { uint16_t bits; };

RF_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  __builtin_memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

RF_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  __builtin_memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

// ---- element loads (to the accumulation type) and stores (from it) ----

RF_HD float load(const float* p) { return *p; }
RF_HD double load(const double* p) { return *p; }
RF_HD float load(const bf16_t* p) { return bits_to_float(static_cast<uint32_t>(p->bits) << 16); }

RF_HD float load(const fp16_t* p) {
  // IEEE half -> float, exact for every input (normals, subnormals, inf, NaN).
  const uint32_t h = p->bits;
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0x1fu) return bits_to_float(sign | 0x7f800000u | (man << 13));
  if (exp != 0) return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
  // zero or subnormal: man * 2^-24, exact in float
  const float mag = static_cast<float>(man) * 5.9604644775390625e-8f;
  return sign ? -mag : mag;
}

RF_HD void store(float* p, float v) { *p = v; }
RF_HD void store(double* p, double v) { *p = v; }

RF_HD void store(bf16_t* p, float v) {
  // round to nearest even; NaN stays a (quiet) NaN
  const uint32_t u = float_to_bits(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    p->bits = static_cast<uint16_t>((u >> 16) | 0x40u);
    return;
  }
  const uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
  p->bits = static_cast<uint16_t>(rounded >> 16);
}

RF_HD void store(fp16_t* p, float v) {
  // float -> IEEE half, round to nearest even, overflow to inf, NaN kept.
  const uint32_t u = float_to_bits(v);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  uint16_t out;
  if (a > 0x7f800000u) {
    out = static_cast<uint16_t>(sign | 0x7e00u);
  } else if (a >= 0x477ff000u) {  // rounds to >= 65520: inf
    out = static_cast<uint16_t>(sign | 0x7c00u);
  } else if (a < 0x38800000u) {  // below the smallest normal half: subnormal or zero
    // scale so that one half-subnormal unit is 1.0, then round to nearest even in float arithmetic
    const float mag = bits_to_float(a) * 16777216.0f;  // * 2^24
    const float r = mag + 12582912.0f - 12582912.0f;    // round half to even at integer precision
    out = static_cast<uint16_t>(sign | static_cast<uint32_t>(r));
  } else {
    const uint32_t rounded = a + 0xfffu + ((a >> 13) & 1u);
    out = static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
  }
  p->bits = out;
}

// Accumulation type: fp32 for fp32/bf16/fp16 inputs, fp64 for fp64 inputs.
template <class T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };

template <class Acc> RF_HD Acc acc_exp(Acc x);
template <> RF_HD float acc_exp<float>(float x) {
#if defined(__CUDA_ARCH__)
  return __expf(x);
#else
  return std::exp(x);
#endif
}
template <> RF_HD double acc_exp<double>(double x) { return exp(x); }

template <class Acc> RF_HD Acc acc_log(Acc x) { return log(x); }

template <class Acc> RF_HD Acc neg_inf() { return -std::numeric_limits<Acc>::infinity(); }
template <class Acc> RF_HD Acc quiet_nan() { return std::numeric_limits<Acc>::quiet_NaN(); }
template <class Acc> RF_HD bool is_nan(Acc x) { return x != x; }

// ---- online log-sum-exp ----
//
// State of a partial log-sum-exp: sum_i exp(v_i) = s * exp(m), with m the largest value seen. A block of values is
// folded in as (block max, sum of exp(v - block max)); blocks merge in any order, so threads, warps and CPU chunks all
// use the same merge. NaN is tracked as a flag rather than through m (a max that skips NaN would hide it); a +inf
// maximum makes the result NaN, as log_softmax does.
template <class Acc>
struct LseState {
  Acc m;
  Acc s;
  bool nan;
};

template <class Acc> RF_HD LseState<Acc> lse_empty() { return {neg_inf<Acc>(), Acc(0), false}; }

template <class Acc> RF_HD LseState<Acc> lse_merge(LseState<Acc> a, LseState<Acc> b) {
  const Acc m = a.m > b.m ? a.m : b.m;
  LseState<Acc> r;
  r.m = m;
  r.nan = a.nan || b.nan;
  if (m == neg_inf<Acc>()) {
    r.s = Acc(0);
  } else {
    const Acc sa = a.s == Acc(0) ? Acc(0) : a.s * acc_exp<Acc>(a.m - m);
    const Acc sb = b.s == Acc(0) ? Acc(0) : b.s * acc_exp<Acc>(b.m - m);
    r.s = sa + sb;
  }
  return r;
}

// Fold one value into the state (used for scalar heads and tails and by GPU threads).
template <class Acc> RF_HD void lse_push(LseState<Acc>& st, Acc v) {
  if (is_nan(v)) {
    st.nan = true;
  } else if (v > st.m) {
    st.s = (st.m == neg_inf<Acc>() ? Acc(0) : st.s * acc_exp<Acc>(st.m - v)) + Acc(1);
    st.m = v;
  } else if (v != neg_inf<Acc>()) {
    st.s += acc_exp<Acc>(v - st.m);
  }
}

// log(sum exp), NaN when the row held a NaN or +inf; -inf for an empty (or all -inf) set.
template <class Acc> RF_HD Acc lse_value(LseState<Acc> st) {
  if (st.nan || st.m == std::numeric_limits<Acc>::infinity()) return quiet_nan<Acc>();
  if (st.m == neg_inf<Acc>()) return neg_inf<Acc>();
  return st.m + acc_log<Acc>(st.s);
}

// ---- token formulas ----

// log p(label) at temperature 1/inv_temp, from the label logit and the row's lse (of the scaled logits).
template <class Acc> RF_HD Acc token_logp(Acc label_logit, Acc inv_temp, Acc lse) {
  return label_logit * inv_temp - lse;
}

// d token_logp / d x_v scaled by the upstream coefficient, from the entry's softmax probability p:
// coef * (1[v == label] - p) * inv_temp. The CPU row loop calls it with its vectorised exp.
template <class Acc> RF_HD Acc softmax_grad(Acc p, bool is_label, Acc coef, Acc inv_temp) {
  return coef * ((is_label ? Acc(1) : Acc(0)) - p) * inv_temp;
}

// The same from the logit x_v and the row's lse (of the scaled logits).
template <class Acc> RF_HD Acc token_grad(Acc x, bool is_label, Acc coef, Acc inv_temp, Acc lse) {
  return softmax_grad<Acc>(acc_exp<Acc>(x * inv_temp - lse), is_label, coef, inv_temp);
}

// Whether a label addresses a vocabulary entry, is masked, or is invalid (outside [0, V) and not ignore_index).
enum class LabelKind : int { kValid = 0, kMasked = 1, kInvalid = 2 };
RF_HD LabelKind classify_label(int64_t y, int64_t ignore_index, int64_t V) {
  if (y == ignore_index) return LabelKind::kMasked;
  if (y < 0 || y >= V) return LabelKind::kInvalid;
  return LabelKind::kValid;
}

template <class I> RF_HD int64_t load_index(const void* base, int64_t offset) {
  return static_cast<int64_t>(static_cast<const I*>(base)[offset]);
}

RF_HD int64_t load_index_any(const void* base, IndexDType dt, int64_t offset) {
  return dt == IndexDType::kInt32 ? load_index<int32_t>(base, offset) : load_index<int64_t>(base, offset);
}

// log-sum-exp of a row's logits over a small token set (ids validated by the caller, duplicates removed).
template <class T, class Acc = typename AccOf<T>::type>
RF_HD Acc set_lse(const T* row, const int64_t* ids, int64_t n_ids) {
  LseState<Acc> st = lse_empty<Acc>();
  for (int64_t i = 0; i < n_ids; ++i) lse_push<Acc>(st, static_cast<Acc>(load(row + ids[i])));
  return lse_value<Acc>(st);
}

}  // namespace rlaifv
