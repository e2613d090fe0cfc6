// Best-of-N self-reward on the CPU: per-token log pi_policy(y_t) - log pi_ref(y_t), both rows in one pass.
#include "../common/dispatch.h"
#include "../kernels.h"
#include "token_row.h"

namespace rlaifv {
namespace cpu {

int64_t bon_token_rewards(const RowsView& policy, const RowsView* ref_logits, const void* ref_logps_v,
                          const IndexView& y, int64_t ignore_index, double inv_temp, void* out_diff) {
  int64_t first_bad = kNoError;
  dispatch_float(policy.dtype, [&](auto tag) {
    using T = decltype(tag);
    using Acc = typename AccOf<T>::type;
    Acc* diff = static_cast<Acc*>(out_diff);
    const Acc* ref_logps = static_cast<const Acc*>(ref_logps_v);
    const Acc it = static_cast<Acc>(inv_temp);
    first_bad = for_each_token_row(
        policy, y, ignore_index,
        [&](int64_t r, int64_t b, int64_t t, int64_t label) {
          const Acc lp = row_token_logp<T>(row_ptr<T>(policy, b, t), policy.V, label, it);
          const Acc lr = ref_logits
                             ? row_token_logp<T>(row_ptr<T>(*ref_logits, b, t), policy.V, label, it)
                             : ref_logps[r];
          diff[r] = lp - lr;
        },
        [&](int64_t r, int64_t, int64_t) { diff[r] = Acc(0); });
  });
  return first_bad;
}

}  // namespace cpu
}  // namespace rlaifv
