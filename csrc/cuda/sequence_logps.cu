// Per-token label log-probs (forward) and their fused gradient (backward) on CUDA: one block per token row; and the
// row-block variants of the lm_head-fused chunked path (lse only; gradient with a label possibly in another block).
#include "../common/dispatch.h"
#include "../kernels.h"
#include "row_block.cuh"

namespace rlaifv {
namespace cuda {

template <class T, class Acc = typename AccOf<T>::type>
__global__ void token_logps_forward_kernel(RowsView x, IndexView y, int64_t ignore_index, Acc inv_temp, Acc* out_logp,
                                           Acc* out_lse, int64_t* err) {
  const TokenRow tr = token_row(x, y, blockIdx.x, ignore_index);
  const int64_t r = tr.r;
  if (tr.kind != LabelKind::kValid) {
    if (threadIdx.x == 0) {
      out_logp[r] = Acc(0);
      out_lse[r] = Acc(0);
      if (tr.kind == LabelKind::kInvalid) report_error(err, r);
    }
    return;
  }
  const T* row = row_ptr<T>(x, tr.b, tr.t);
  const Acc lse = block_row_lse<T>(row, x.V, inv_temp);
  if (threadIdx.x == 0) {
    out_lse[r] = lse;
    out_logp[r] = token_logp<Acc>(static_cast<Acc>(load(row + tr.label)), inv_temp, lse);
  }
}

// block_labels: the rows of a vocabulary block (rows_grad): a label outside [0, V) lies in another block, so the row
// gets the softmax term alone; otherwise such a row is masked (or invalid) and gets zeros.
template <class T, class Acc = typename AccOf<T>::type>
__global__ void token_logps_backward_kernel(RowsView x, IndexView y, int64_t ignore_index, Acc inv_temp,
                                            const Acc* coef, const Acc* lse, MutRowsView dx, bool block_labels) {
  constexpr int N = PackOf<T>::N;
  const TokenRow tr = token_row(x, y, blockIdx.x, ignore_index);
  const int64_t r = tr.r;
  int64_t label = tr.label;
  const T* row = row_ptr<T>(x, tr.b, tr.t);
  T* out = row_ptr<T>(dx, tr.b, tr.t);
  const int64_t V = x.V;
  if (tr.kind != LabelKind::kValid) {
    if (block_labels) {
      label = -1;  // no column of this block is the label
    } else {
      for (int64_t i = threadIdx.x; i < V; i += blockDim.x) store(out + i, Acc(0));
      return;
    }
  }
  const Acc c = coef[r];
  const Acc l = lse[r];
  // The label entry is read before any write, since an in-place backward has out == row.
  const Acc x_label = label >= 0 ? static_cast<Acc>(load(row + label)) : Acc(0);
  __syncthreads();
  const bool packs_align = (reinterpret_cast<uintptr_t>(row) & 15) == (reinterpret_cast<uintptr_t>(out) & 15);
  auto grad = [&](Acc xv, int64_t i) { return token_grad<Acc>(xv, i == label, c, inv_temp, l); };
  auto scalar = [&](int64_t i) { store(out + i, grad(i == label ? x_label : static_cast<Acc>(load(row + i)), i)); };
  visit_row(row, V, scalar, [&](int64_t i) {
    T vals[N];
    load_pack(row + i, vals);
    alignas(16) T res[N];
#pragma unroll
    for (int k = 0; k < N; ++k) store(&res[k], grad(i + k == label ? x_label : static_cast<Acc>(load(&vals[k])), i + k));
    if (packs_align) {
      *reinterpret_cast<uint4*>(out + i) = *reinterpret_cast<const uint4*>(res);
    } else {
#pragma unroll
      for (int k = 0; k < N; ++k) out[i + k] = res[k];
    }
  });
}

void token_logps_forward(const RowsView& x, const IndexView& y, int64_t ignore_index, double inv_temp,
                         void* out_logp, void* out_lse, int64_t* err, uintptr_t stream) {
  const int64_t rows = x.B * x.T;
  if (rows == 0) return;
  dispatch_float(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    using Acc = typename AccOf<T>::type;
    token_logps_forward_kernel<T><<<grid_for(rows), kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
        x, y, ignore_index, static_cast<Acc>(inv_temp), static_cast<Acc*>(out_logp), static_cast<Acc*>(out_lse),
        err);
  });
  check_launch("token_logps_forward");
}

void token_logps_backward(const RowsView& x, const IndexView& y, int64_t ignore_index, double inv_temp,
                          const void* coef, const void* lse, const MutRowsView& dx, uintptr_t stream) {
  const int64_t rows = x.B * x.T;
  if (rows == 0) return;
  dispatch_float(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    using Acc = typename AccOf<T>::type;
    token_logps_backward_kernel<T><<<grid_for(rows), kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
        x, y, ignore_index, static_cast<Acc>(inv_temp), static_cast<const Acc*>(coef),
        static_cast<const Acc*>(lse), dx, false);
  });
  check_launch("token_logps_backward");
}

template <class T, class Acc = typename AccOf<T>::type>
__global__ void rows_lse_kernel(RowsView x, Acc inv_temp, Acc* out_lse) {
  const int64_t r = blockIdx.x;
  const int64_t b = r / x.T;
  const Acc lse = block_row_lse<T>(row_ptr<T>(x, b, r - b * x.T), x.V, inv_temp);
  if (threadIdx.x == 0) out_lse[r] = lse;
}

void rows_lse(const RowsView& x, double inv_temp, void* out_lse, uintptr_t stream) {
  const int64_t rows = x.B * x.T;
  if (rows == 0) return;
  dispatch_float(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    using Acc = typename AccOf<T>::type;
    rows_lse_kernel<T><<<grid_for(rows), kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
        x, static_cast<Acc>(inv_temp), static_cast<Acc*>(out_lse));
  });
  check_launch("rows_lse");
}

void rows_grad(const RowsView& x, const IndexView& y, double inv_temp, const void* coef, const void* lse,
               const MutRowsView& dx, uintptr_t stream) {
  const int64_t rows = x.B * x.T;
  if (rows == 0) return;
  dispatch_float(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    using Acc = typename AccOf<T>::type;
    // ignore_index -1: a label outside [0, V) (the chunked path passes -1 for "in another block") is no one-hot
    token_logps_backward_kernel<T><<<grid_for(rows), kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
        x, y, int64_t(-1), static_cast<Acc>(inv_temp), static_cast<const Acc*>(coef), static_cast<const Acc*>(lse),
        dx, true);
  });
  check_launch("rows_grad");
}

}  // namespace cuda
}  // namespace rlaifv
