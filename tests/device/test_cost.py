"""The roofline time of kernels, against the closed form written out by hand."""

import pytest

from tilesim.device import Device
from tilesim.device.cost import KernelCost
from tilesim.device.kernels.attention import attention_cost
from tilesim.device.kernels.matmul import linear_cost


def test_a_decode_matvec_is_memory_bound_at_the_offchip_bandwidth():
    dev = Device("tiny")  # 1 TFLOP/s fp32, 100 GB/s off-chip (weights), 1 TB/s tiles, 1 us overhead
    cost = linear_cost(1, 1024, 1024)
    t = dev.kernel_time(cost)
    weights = 1024 * 1024 * 4 / 100e9
    activations = (1024 + 1024) * 4 / 1e12
    assert t.memory == pytest.approx(weights + activations, rel=1e-12)
    assert t.compute == pytest.approx(2 * 1024 * 1024 / 1e12, rel=1e-12)
    assert t.total == pytest.approx(1e-6 + weights + activations, rel=1e-12)
    assert t.bound == "memory"


def test_a_large_prefill_matmul_is_compute_bound_at_the_dtype_peak():
    dev = Device("tiny")
    fp32 = dev.kernel_time(linear_cost(4096, 1024, 1024))
    fp16 = dev.kernel_time(linear_cost(4096, 1024, 1024, weight_bytes_per_elem=2, act_bytes=2, dtype="fp16"))
    assert fp32.bound == "compute"
    assert fp32.total == pytest.approx(1e-6 + 2 * 4096 * 1024 * 1024 / 1e12, rel=1e-12)
    assert fp16.compute == pytest.approx(2 * 4096 * 1024 * 1024 / 4e12, rel=1e-12)


def test_memory_traffic_uses_the_bandwidth_of_the_memory_the_operands_live_in():
    tiles_everywhere = Device("ipu-gc200")
    cost = KernelCost("copy", "elementwise", 0.0, "fp32", {"weights": 47.5e6, "kv_cache": 0.0})
    assert tiles_everywhere.kernel_time(cost).memory == pytest.approx(47.5e6 / 47.5e12, rel=1e-12)
    hbm = Device("trn1")
    efficiency = hbm.spec.core.efficiency["elementwise"].memory  # trn1 is calibrated
    assert hbm.kernel_time(cost).memory == pytest.approx(47.5e6 / (410 * 2**30 * efficiency), rel=1e-12)


def test_calibrated_efficiency_scales_the_roofline():
    dev = Device("tiny", efficiency={"matmul": {"compute": 0.5, "memory": 0.25}})
    t = dev.kernel_time(linear_cost(1, 1024, 1024))
    assert t.memory == pytest.approx((1024 * 1024 * 4 / 100e9 + 2048 * 4 / 1e12) / 0.25, rel=1e-12)
    assert t.compute == pytest.approx(2 * 1024 * 1024 / 1e12 / 0.5, rel=1e-12)


def test_attention_cost_reads_the_cache_once_per_kv_head():
    cost = attention_cost(batch=1, t=1, context=128, hq=8, hkv=2, d=64)
    assert cost.bytes["kv_cache"] == 2 * 2 * 128 * 64 * 4
    assert cost.flops == 4 * 8 * 128 * 64 + 5 * 8 * 128


def test_the_systolic_array_pads_n_and_k_but_not_the_rows():
    """array 128: a 432 x 200 product costs as 512 x 256; the rows stream through unpadded."""
    dev = Device("tiny", array=128)
    t = dev.kernel_time(linear_cost(300, 432, 200))
    assert t.compute == pytest.approx(2 * 300 * 512 * 256 / 1e12, rel=1e-12)
    assert linear_cost(300, 432, 200).flops == 2 * 300 * 432 * 200  # the report counts the real work
    plain = Device("tiny").kernel_time(linear_cost(300, 432, 200))
    assert plain.compute == pytest.approx(2 * 300 * 432 * 200 / 1e12, rel=1e-12)


def test_a_decode_step_reads_the_kv_cache_one_position_at_a_time():
    """(position, sequence, head, dim) layout: 2 * context pieces whatever the batch, each
    piece `dma_piece_s`; a prefill reads no cache."""
    decode = attention_cost(batch=4, t=1, context=256, hq=8, hkv=2, d=64, kv_bytes=2)
    assert decode.pieces == 2 * 256
    assert attention_cost(batch=1, t=1, context=256, hq=8, hkv=2, d=64).pieces == 2 * 256
    assert attention_cost(batch=1, t=128, context=64.5, hq=8, hkv=2, d=64).pieces == 0
    dev = Device("tiny", dma_piece_s="3 ns")
    t = dev.kernel_time(decode)
    kv = 2 * 4 * 2 * 256 * 64 * 2 / 100e9  # the cache is off-chip on tiny
    acts = 2 * 4 * 8 * 64 * 4 / 1e12
    assert t.memory == pytest.approx(kv + acts + 512 * 3e-9, rel=1e-12)


def test_each_softmax_row_pays_its_fixed_cost_on_the_compute_side():
    """`softmax_row_s` per query position and head: a 128-token prefill of 8 heads on 2
    sequences issues 2 * 128 * 8 rows, a decode step of 4 sequences 4 * 8; it adds to the
    FLOPs' time, not to the memory side of the roofline."""
    prefill = attention_cost(batch=2, t=128, context=64.5, hq=8, hkv=2, d=64)
    decode = attention_cost(batch=4, t=1, context=256, hq=8, hkv=2, d=64)
    assert (prefill.rows, decode.rows) == (2 * 128 * 8, 4 * 8)
    plain, slow = Device("tiny"), Device("tiny", softmax_row_s="0.5 us")
    for cost in (prefill, decode):
        base, t = plain.kernel_time(cost), slow.kernel_time(cost)
        assert t.compute == pytest.approx(base.compute + cost.rows * 0.5e-6, rel=1e-12)
        assert t.memory == base.memory
    flops = 4 * 2 * 128 * 8 * 64.5 * 64 + 5 * 2 * 128 * 8 * 64.5
    assert slow.kernel_time(prefill).compute == pytest.approx(flops / 1e12 + 2048 * 0.5e-6, rel=1e-12)


def test_a_reserved_category_must_not_be_named_as_a_tensor_kind():
    from tilesim.errors import ConfigError

    with pytest.raises(ConfigError, match=r"reserved\.weights"):
        Device("tiny", reserved={"weights": "1 MiB"})
    assert Device("tiny", reserved={"model_code": "96 MiB"}).spec.core.reserved == {"model_code": 96 * 2**20}


def test_a_kernel_on_an_ipu_is_a_superstep_compute_sync_exchange():
    """GC200: 62.5 TFLOP/s fp32, 47.5 TB/s tile memory, 8 TB/s exchange, 0.5 us sync; the
    compute-set launch and the products' efficiency as the preset fits them."""
    dev = Device("ipu-gc200")
    core = dev.spec.core
    cost = linear_cost(16, 2048, 2048)
    t = dev.kernel_time(cost)
    compute = 2 * 16 * 2048 * 2048 / (62.5e12 * core.efficiency["matmul"].compute)
    memory = (2048 * 2048 * 4 + 16 * 2048 * 4 * 2) / (47.5e12 * core.efficiency["matmul"].memory)
    exchange = 16 * 2048 * 4 * 2 / 8e12  # the activations it reads and writes change tiles
    assert t.sync == pytest.approx(0.5e-6) and t.exchange == pytest.approx(exchange, rel=1e-12)
    launch = core.kernel_overhead_s
    assert t.total == pytest.approx(launch + max(compute, memory) + 0.5e-6 + exchange, rel=1e-12)
    assert Device("tiny").kernel_time(cost).sync == 0.0  # the other presets run kernels back to back
