"""bench/gpu.py's FLOP count and peak table (its run without a GPU: tests/bench/test_quick.py)."""

from bench.gpu import flops_per_token, gemma2_2b_config, peak_tflops


def test_flops_per_token_to_layer_19_of_gemma_2_2b():
    # per block: q 2304·2048 + k, v 2·2304·1024 + o 2048·2304 + MLP 3·2304·9216 = 77,856,768 weights,
    # 2 FLOPs each, plus causal attention 4·8·256·(1024 + 1)/2 = 4,198,400; 20 blocks
    assert flops_per_token(gemma2_2b_config(), 20, 1024) == 20 * (2 * 77_856_768 + 4_198_400)


def test_peak_flops_by_device_name():
    assert peak_tflops("NVIDIA H100 80GB HBM3", None) == 989.4
    assert peak_tflops("NVIDIA H100 PCIe", None) == 756.0
    assert peak_tflops("NVIDIA L40S", None) == 362.0 and peak_tflops("NVIDIA L4", None) == 121.0
    assert peak_tflops("NVIDIA GeForce GTX 1080", None) is None
    assert peak_tflops("NVIDIA H100 PCIe", 500.0) == 500.0
