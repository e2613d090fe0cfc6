// Yes/no extraction on CUDA: one block per claim row; full-vocabulary lse by the block, the two token-set
// log-sum-exps (a handful of ids) by thread 0 with the shared set_lse.
#include "../common/dispatch.h"
#include "../kernels.h"
#include "row_block.cuh"

namespace rlaifv {
namespace cuda {

template <class T, class Acc = typename AccOf<T>::type>
__global__ void yes_no_kernel(RowsView x, IndexView positions, bool has_positions, TokenSet yes, TokenSet no,
                              Acc* out_yes, Acc* out_no, int64_t* err) {
  const int64_t b = blockIdx.x;
  int64_t t = 0;
  if (has_positions) {
    t = load_index_any(positions.data, positions.dtype, b * positions.sb);
    if (t < 0) t += x.T;
    if (t < 0 || t >= x.T) {
      if (threadIdx.x == 0) {
        out_yes[b] = out_no[b] = Acc(0);
        report_error(err, b);
      }
      return;
    }
  }
  const T* row = row_ptr<T>(x, b, t);
  const Acc lse = block_row_lse<T>(row, x.V, Acc(1));
  if (threadIdx.x == 0) {
    out_yes[b] = set_lse<T>(row, yes.ids, yes.n) - lse;
    out_no[b] = set_lse<T>(row, no.ids, no.n) - lse;
  }
}

void yes_no_logprobs(const RowsView& x, const IndexView* positions, TokenSet yes, TokenSet no, void* out_yes,
                     void* out_no, int64_t* err, uintptr_t stream) {
  if (x.B == 0) return;
  const IndexView pos = positions ? *positions : IndexView{nullptr, IndexDType::kInt64, 0, 0};
  dispatch_float(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    using Acc = typename AccOf<T>::type;
    yes_no_kernel<T><<<grid_for(x.B), kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
        x, pos, positions != nullptr, yes, no, static_cast<Acc*>(out_yes), static_cast<Acc*>(out_no), err);
  });
  check_launch("yes_no_logprobs");
}

}  // namespace cuda
}  // namespace rlaifv
