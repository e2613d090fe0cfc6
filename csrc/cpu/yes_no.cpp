// Yes/no extraction on the CPU: log P(yes-set) and log P(no-set) over the full vocabulary, one row per claim.
#include "../common/dispatch.h"
#include "../kernels.h"
#include "vec_math.h"

namespace rlaifv {
namespace cpu {

int64_t yes_no_logprobs(const RowsView& x, const IndexView* positions, TokenSet yes, TokenSet no, void* out_yes,
                        void* out_no) {
  int64_t first_bad = kNoError;
  dispatch_float(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    using Acc = typename AccOf<T>::type;
    Acc* py = static_cast<Acc*>(out_yes);
    Acc* pn = static_cast<Acc*>(out_no);
#pragma omp parallel for schedule(guided) reduction(min : first_bad)
    for (int64_t b = 0; b < x.B; ++b) {
      int64_t t = 0;
      if (positions) {
        t = load_index_any(positions->data, positions->dtype, b * positions->sb);
        if (t < 0) t += x.T;  // python-style negative positions
        if (t < 0 || t >= x.T) {
          if (b < first_bad) first_bad = b;
          py[b] = pn[b] = Acc(0);
          continue;
        }
      }
      const T* row = row_ptr<T>(x, b, t);
      const Acc lse = lse_value<Acc>(row_lse<T>(row, x.V, Acc(1)));
      py[b] = set_lse<T>(row, yes.ids, yes.n) - lse;
      pn[b] = set_lse<T>(row, no.ids, no.n) - lse;
    }
  });
  return first_bad;
}

}  // namespace cpu
}  // namespace rlaifv
