#include "own_conv_bindings.h"

#include <torch/csrc/utils/pybind.h>

#include <optional>
#include <string>

#include "own_conv.h"

namespace contres {

void bind_own_conv(pybind11::module_& m) {
  // One own convolution, to time against ATen's: "forward", conv(a, K) + b; "transpose", convT(a, K);
  // "weight_grad", dL/dK of conv(b, K) under a.
  m.def(
      "_own_conv",
      [](const std::string& op, const at::Tensor& a, const std::optional<at::Tensor>& b, const at::Tensor& K) {
        TORCH_CHECK_VALUE(op == "forward" || op == "transpose" || op == "weight_grad",
                          "contres: op must be forward, transpose or weight_grad, got ", op);
        const at::Tensor other = b.value_or(at::Tensor());
        const bool ok = op == "transpose"     ? cpu::own_conv_supports(a, K.transpose(0, 1))
                        : op == "weight_grad" ? other.defined() && cpu::own_conv_supports(other, K)
                                              : cpu::own_conv_supports(a, K);
        TORCH_CHECK_VALUE(ok, "contres: the own convolution takes float32 CPU tensors (B, C, H, W) and (Cout, C, k, "
                          "k) with odd k (", op, ")");
        if (op == "forward") return cpu::own_conv2d(a, K, other);
        if (op == "transpose") return cpu::own_conv_transpose2d(a, K);
        return cpu::own_conv_weight_grad(a, other, K);
      },
      pybind11::arg("op"), pybind11::arg("a"), pybind11::arg("b"), pybind11::arg("K"));
}

}  // namespace contres
