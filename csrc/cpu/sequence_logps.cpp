// Per-token label log-probs (forward) and their fused gradient (backward) on the CPU; the row-block variants
// (lse only, gradient with a label possibly outside the block) of the lm_head-fused chunked path.
#include "../common/dispatch.h"
#include "../kernels.h"
#include "token_row.h"

namespace rlaifv {
namespace cpu {

int64_t token_logps_forward(const RowsView& x, const IndexView& y, int64_t ignore_index, double inv_temp,
                            void* out_logp, void* out_lse) {
  int64_t first_bad = kNoError;
  dispatch_float(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    using Acc = typename AccOf<T>::type;
    Acc* logp = static_cast<Acc*>(out_logp);
    Acc* lse = static_cast<Acc*>(out_lse);
    const Acc it = static_cast<Acc>(inv_temp);
    first_bad = for_each_token_row(
        x, y, ignore_index,
        [&](int64_t r, int64_t b, int64_t t, int64_t label) {
          logp[r] = row_token_logp<T>(row_ptr<T>(x, b, t), x.V, label, it, &lse[r]);
        },
        [&](int64_t r, int64_t, int64_t) {
          logp[r] = Acc(0);
          lse[r] = Acc(0);
        });
  });
  return first_bad;
}

void token_logps_backward(const RowsView& x, const IndexView& y, int64_t ignore_index, double inv_temp,
                          const void* coef_v, const void* lse_v, const MutRowsView& dx) {
  dispatch_float(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    using Acc = typename AccOf<T>::type;
    const Acc* coef = static_cast<const Acc*>(coef_v);
    const Acc* lse = static_cast<const Acc*>(lse_v);
    const Acc it = static_cast<Acc>(inv_temp);
    for_each_token_row(
        x, y, ignore_index,
        [&](int64_t r, int64_t b, int64_t t, int64_t label) {
          row_grad<T, T>(row_ptr<T>(x, b, t), row_ptr<T>(dx, b, t), x.V, label, coef[r], it, lse[r]);
        },
        [&](int64_t, int64_t b, int64_t t) { row_zero<T>(row_ptr<T>(dx, b, t), x.V); });
  });
}

void rows_lse(const RowsView& x, double inv_temp, void* out_lse) {
  dispatch_float(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    using Acc = typename AccOf<T>::type;
    Acc* lse = static_cast<Acc*>(out_lse);
    const Acc it = static_cast<Acc>(inv_temp);
    const int64_t n_rows = x.B * x.T;
#pragma omp parallel for schedule(guided)
    for (int64_t r = 0; r < n_rows; ++r) {
      const int64_t b = r / x.T;
      lse[r] = lse_value<Acc>(row_lse<T>(row_ptr<T>(x, b, r - b * x.T), x.V, it));
    }
  });
}

void rows_grad(const RowsView& x, const IndexView& y, double inv_temp, const void* coef_v, const void* lse_v,
               const MutRowsView& dx) {
  dispatch_float(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    using Acc = typename AccOf<T>::type;
    const Acc* coef = static_cast<const Acc*>(coef_v);
    const Acc* lse = static_cast<const Acc*>(lse_v);
    const Acc it = static_cast<Acc>(inv_temp);
    const int64_t n_rows = x.B * x.T;
#pragma omp parallel for schedule(guided)
    for (int64_t r = 0; r < n_rows; ++r) {
      const TokenRow row = token_row(x, y, r, -1);
      const int64_t label = row.kind == LabelKind::kValid ? row.label : -1;  // else: in another vocabulary block
      row_grad<T, T>(row_ptr<T>(x, row.b, row.t), row_ptr<T>(dx, row.b, row.t), x.V, label, coef[r], it, lse[r]);
    }
  });
}

}  // namespace cpu
}  // namespace rlaifv
