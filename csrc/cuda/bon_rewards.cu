// Best-of-N self-reward on CUDA: one block per token row reads the policy row and the reference row (or the
// precomputed reference log-prob) and writes log pi_policy(y_t) - log pi_ref(y_t).
#include "../common/dispatch.h"
#include "../kernels.h"
#include "row_block.cuh"

namespace rlaifv {
namespace cuda {

template <class T, class Acc = typename AccOf<T>::type>
__global__ void bon_token_rewards_kernel(RowsView policy, RowsView ref, bool has_ref_logits, const Acc* ref_logps,
                                         IndexView y, int64_t ignore_index, Acc inv_temp, Acc* out_diff,
                                         int64_t* err) {
  const TokenRow tr = token_row(policy, y, blockIdx.x, ignore_index);
  const int64_t r = tr.r;
  const int64_t b = tr.b;
  const int64_t t = tr.t;
  const int64_t label = tr.label;
  if (tr.kind != LabelKind::kValid) {
    if (threadIdx.x == 0) {
      out_diff[r] = Acc(0);
      if (tr.kind == LabelKind::kInvalid) report_error(err, r);
    }
    return;
  }
  const T* prow = row_ptr<T>(policy, b, t);
  const Acc lse_p = block_row_lse<T>(prow, policy.V, inv_temp);
  Acc lp_ref = Acc(0);
  if (has_ref_logits) {
    __syncthreads();  // the block reduction's shared memory is reused
    const T* rrow = row_ptr<T>(ref, b, t);
    const Acc lse_r = block_row_lse<T>(rrow, policy.V, inv_temp);
    if (threadIdx.x == 0) lp_ref = token_logp<Acc>(static_cast<Acc>(load(rrow + label)), inv_temp, lse_r);
  } else if (threadIdx.x == 0) {
    lp_ref = ref_logps[r];
  }
  if (threadIdx.x == 0) {
    out_diff[r] = token_logp<Acc>(static_cast<Acc>(load(prow + label)), inv_temp, lse_p) - lp_ref;
  }
}

void bon_token_rewards(const RowsView& policy, const RowsView* ref_logits, const void* ref_logps, const IndexView& y,
                       int64_t ignore_index, double inv_temp, void* out_diff, int64_t* err, uintptr_t stream) {
  const int64_t rows = policy.B * policy.T;
  if (rows == 0) return;
  const RowsView ref = ref_logits ? *ref_logits : policy;
  dispatch_float(policy.dtype, [&](auto tag) {
    using T = decltype(tag);
    using Acc = typename AccOf<T>::type;
    bon_token_rewards_kernel<T><<<grid_for(rows), kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
        policy, ref, ref_logits != nullptr, static_cast<const Acc*>(ref_logps), y, ignore_index,
        static_cast<Acc>(inv_temp), static_cast<Acc*>(out_diff), err);
  });
  check_launch("bon_token_rewards");
}

}  // namespace cuda
}  // namespace rlaifv
