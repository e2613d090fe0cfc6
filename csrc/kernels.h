// Host entry points of every kernel, CPU and CUDA. Outputs of the accumulation type (fp32, or fp64 for fp64 logits)
// are contiguous (B, T) buffers allocated by the caller. Functions that validate indices return the first invalid
// flat position (b * T + t, or b for positions), or kNoError; CUDA versions write it to a device int64 instead.
//
// rows_lse and rows_grad serve blocks of logits (the lm_head-fused chunked path): rows_lse writes every row's
// log-sum-exp of x * inv_temp (no labels, no masking); rows_grad writes the gradient coef * (onehot - softmax) *
// inv_temp of every row, where a label outside [0, V) means the row's label lies in no column of this block (no
// one-hot term, never an error); it may run in place (dx over x).
#pragma once

#include <cstdint>

#include "common/views.h"

namespace rlaifv {

struct TokenSet {
  const int64_t* ids;  // host pointer for CPU, device pointer for CUDA
  int64_t n;
};

namespace cpu {
int64_t token_logps_forward(const RowsView& x, const IndexView& y, int64_t ignore_index, double inv_temp,
                            void* out_logp, void* out_lse);
void token_logps_backward(const RowsView& x, const IndexView& y, int64_t ignore_index, double inv_temp,
                          const void* coef, const void* lse, const MutRowsView& dx);
void rows_lse(const RowsView& x, double inv_temp, void* out_lse);
void rows_grad(const RowsView& x, const IndexView& y, double inv_temp, const void* coef, const void* lse,
               const MutRowsView& dx);
int64_t bon_token_rewards(const RowsView& policy, const RowsView* ref_logits, const void* ref_logps,
                          const IndexView& y, int64_t ignore_index, double inv_temp, void* out_diff);
int64_t yes_no_logprobs(const RowsView& x, const IndexView* positions, TokenSet yes, TokenSet no, void* out_yes,
                        void* out_no);
bool advise_huge_pages(void* data, int64_t nbytes);
bool has_openmp();
int max_threads();
}  // namespace cpu

#ifdef RLAIFV_WITH_CUDA
namespace cuda {
void token_logps_forward(const RowsView& x, const IndexView& y, int64_t ignore_index, double inv_temp,
                         void* out_logp, void* out_lse, int64_t* err, uintptr_t stream);
void token_logps_backward(const RowsView& x, const IndexView& y, int64_t ignore_index, double inv_temp,
                          const void* coef, const void* lse, const MutRowsView& dx, uintptr_t stream);
void rows_lse(const RowsView& x, double inv_temp, void* out_lse, uintptr_t stream);
void rows_grad(const RowsView& x, const IndexView& y, double inv_temp, const void* coef, const void* lse,
               const MutRowsView& dx, uintptr_t stream);
void bon_token_rewards(const RowsView& policy, const RowsView* ref_logits, const void* ref_logps, const IndexView& y,
                       int64_t ignore_index, double inv_temp, void* out_diff, int64_t* err, uintptr_t stream);
void yes_no_logprobs(const RowsView& x, const IndexView* positions, TokenSet yes, TokenSet no, void* out_yes,
                     void* out_no, int64_t* err, uintptr_t stream);
}  // namespace cuda
#endif

}  // namespace rlaifv
