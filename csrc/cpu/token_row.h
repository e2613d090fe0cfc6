// One token row on the CPU: its log-sum-exp and its label log-prob, shared by sequence_logps and bon_rewards.
#pragma once

#include "../common/views.h"
#include "vec_math.h"

namespace rlaifv {
namespace cpu {

template <class T, class Acc = typename AccOf<T>::type>
inline Acc row_token_logp(const T* row, int64_t V, int64_t label, Acc inv_temp, Acc* lse_out = nullptr) {
  const Acc lse = lse_value<Acc>(row_lse<T>(row, V, inv_temp));
  if (lse_out) *lse_out = lse;
  return token_logp<Acc>(static_cast<Acc>(load(row + label)), inv_temp, lse);
}

// Calls f(r, b, t, label) for every row whose label is valid; masked rows get f_masked(r); invalid ones are
// reported through the returned first invalid flat position and get f_masked too (their outputs are zero).
template <class F, class G>
int64_t for_each_token_row(const RowsView& x, const IndexView& y, int64_t ignore_index, F&& f, G&& f_masked) {
  const int64_t n_rows = x.B * x.T;
  int64_t first_bad = kNoError;
#pragma omp parallel for schedule(guided) reduction(min : first_bad)
  for (int64_t r = 0; r < n_rows; ++r) {
    const TokenRow row = token_row(x, y, r, ignore_index);
    if (row.kind == LabelKind::kValid) {
      f(r, row.b, row.t, row.label);
    } else {
      if (row.kind == LabelKind::kInvalid && r < first_bad) first_bad = r;
      f_masked(r, row.b, row.t);
    }
  }
  return first_bad;
}

}  // namespace cpu
}  // namespace rlaifv
