"""Where the GPU time goes: a kernel-level profile of fused vs eager on the large case, and cuDNN's speed for
the convolutions of a step in NCHW vs channels_last (float32/TF32 and bf16). Prints tables; no assertions."""
import sys

import torch
import torch.nn.functional as F

import contres


def timed(fn, reps=20):
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def conv_layouts(B=128, C=64, H=32):
    print(f"cuDNN convolutions of one step, B={B} C={C} {H}x{H} (ms)")
    for dtype in (torch.float32, torch.bfloat16):
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(B, C, H, H, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
            w = torch.randn(C, C, 3, 3, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
            g = torch.randn_like(x)
            fwd = timed(lambda: F.conv2d(x, w, padding=1))
            bwd = timed(lambda: torch.ops.aten.convolution_backward(g, x, w, None, [1, 1], [1, 1], [1, 1], False,
                                                                     [0, 0], 1, [True, True, False]))
            print(f"  {str(dtype):15s} {'channels_last' if fmt == torch.channels_last else 'NCHW':14s} "
                  f"fwd {fwd:.3f}  bwd(data+weight) {bwd:.3f}")


def profile(backend, B=128, C=64, H=32, N=8):
    block = contres.ODEBlock(C, n_steps=N, backend=backend).cuda()
    x = torch.randn(B, C, H, H, device="cuda", requires_grad=True)
    step = lambda: block(x).backward(torch.ones(B, C, H, H, device="cuda"))
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA,
                                            torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
        torch.cuda.synchronize()
    print(f"--- {backend}: fwd+bwd B={B} C={C} {H}x{H} N={N}, {timed(step, 10):.3f} ms per iteration")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))


if __name__ == "__main__":
    torch.backends.cudnn.benchmark = "--benchmark" in sys.argv
    conv_layouts()
    profile("fused")
    profile("reference")
