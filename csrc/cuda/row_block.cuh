// Block-level building blocks of the CUDA kernels: one thread block owns one row of V logits. Threads stride over
// the row in 16-byte packs (scalar head and tail where the row is not 16-byte aligned), keep a shared LseState from
// common/row_math.h, and reduce it across the block with the same merge the CPU uses.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "../common/views.h"

namespace rlaifv {
namespace cuda {

constexpr int kThreads = 256;

inline void check_launch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

template <class T> struct PackOf { static constexpr int N = 16 / static_cast<int>(sizeof(T)); };

// Number of leading elements before the row reaches a 16-byte boundary (the whole row if it never does).
template <class T>
__device__ __forceinline__ int64_t aligned_head(const T* row, int64_t V) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(row);
  if (addr % sizeof(T) != 0) return V;
  const int64_t head = static_cast<int64_t>(((16 - (addr & 15)) & 15) / sizeof(T));
  return head < V ? head : V;
}

// Calls scalar(i) for unaligned head/tail elements and pack(i) for each aligned 16-byte pack starting at i.
template <class T, class FS, class FP>
__device__ __forceinline__ void visit_row(const T* row, int64_t V, FS&& scalar, FP&& pack) {
  constexpr int N = PackOf<T>::N;
  const int64_t head = aligned_head(row, V);
  const int64_t n_packs = (V - head) / N;
  const int64_t tail = head + n_packs * N;
  for (int64_t i = threadIdx.x; i < head; i += blockDim.x) scalar(i);
  for (int64_t p = threadIdx.x; p < n_packs; p += blockDim.x) pack(head + p * N);
  for (int64_t i = tail + threadIdx.x; i < V; i += blockDim.x) scalar(i);
}

template <class T>
__device__ __forceinline__ void load_pack(const T* src, T (&vals)[PackOf<T>::N]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(src);
  const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int k = 0; k < PackOf<T>::N; ++k) vals[k] = v[k];
}

template <class Acc>
__device__ __forceinline__ LseState<Acc> warp_merge(LseState<Acc> st) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    LseState<Acc> o;
    o.m = __shfl_down_sync(0xffffffffu, st.m, off);
    o.s = __shfl_down_sync(0xffffffffu, st.s, off);
    o.nan = __shfl_down_sync(0xffffffffu, static_cast<int>(st.nan), off) != 0;
    st = lse_merge<Acc>(st, o);
  }
  return st;
}

// Merge every thread's state; the result is valid in thread 0. blockDim.x must be a multiple of 32.
template <class Acc>
__device__ __forceinline__ LseState<Acc> block_merge(LseState<Acc> st) {
  __shared__ Acc sm[32];
  __shared__ Acc ss[32];
  __shared__ int sn[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  st = warp_merge(st);
  if (lane == 0) {
    sm[warp] = st.m;
    ss[warp] = st.s;
    sn[warp] = st.nan;
  }
  __syncthreads();
  if (warp == 0) {
    const int n_warps = blockDim.x >> 5;
    st = lane < n_warps ? LseState<Acc>{sm[lane], ss[lane], sn[lane] != 0} : lse_empty<Acc>();
    st = warp_merge(st);
  }
  return st;
}

// log-sum-exp of row[0:V] * inv_temp, valid in thread 0.
template <class T, class Acc = typename AccOf<T>::type>
__device__ Acc block_row_lse(const T* row, int64_t V, Acc inv_temp) {
  constexpr int N = PackOf<T>::N;
  LseState<Acc> st = lse_empty<Acc>();
  visit_row(
      row, V, [&](int64_t i) { lse_push<Acc>(st, static_cast<Acc>(load(row + i)) * inv_temp); },
      [&](int64_t i) {
        T vals[N];
        load_pack(row + i, vals);
        Acc v[N];
        Acc pm = neg_inf<Acc>();
        bool nan = false;
#pragma unroll
        for (int k = 0; k < N; ++k) {
          v[k] = static_cast<Acc>(load(&vals[k])) * inv_temp;
          nan |= is_nan(v[k]);
          pm = v[k] > pm ? v[k] : pm;
        }
        Acc ps = Acc(0);
        if (pm != neg_inf<Acc>()) {
#pragma unroll
          for (int k = 0; k < N; ++k) ps += acc_exp<Acc>(v[k] - pm);
        }
        st = lse_merge<Acc>(st, LseState<Acc>{pm, ps, nan});
      });
  return lse_value<Acc>(block_merge<Acc>(st));
}

__device__ __forceinline__ void report_error(int64_t* err, int64_t position) {
  atomicMin(reinterpret_cast<unsigned long long*>(err), static_cast<unsigned long long>(position));
}

inline unsigned int grid_for(int64_t rows) {
  if (rows > 0x7fffffffLL) throw std::invalid_argument("too many rows for one CUDA launch");
  return static_cast<unsigned int>(rows);
}

}  // namespace cuda
}  // namespace rlaifv
