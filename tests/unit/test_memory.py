"""The memory planner: PEFT-exact parameter counts on real architectures, the ZeRO paper's numbers, the CLI."""

import json

import pytest

from adapters import memory
from pipelines import cli
from pipelines.config import AdapterConfig, ModelConfig, TrainConfig

REPO_CONFIGS = memory.Path(__file__).resolve().parents[2] / "configs"
LLAMA_2_7B = REPO_CONFIGS / "models" / "llama-2-7b.json"
LLAMA_2_7B_PARAMS = 6_738_415_616  # meta-llama/Llama-2-7b-hf, model.num_parameters()
MISTRAL_7B = {  # mistralai/Mistral-7B-v0.1 config.json: grouped-query attention (8 KV heads)
    "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000, "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": False,
}
MISTRAL_7B_PARAMS = 7_241_732_096
GB = 1e9  # the ZeRO paper's unit


@pytest.fixture(scope="module")
def llama_2_7b():
    return memory.load_hf_config(LLAMA_2_7B)


@pytest.mark.parametrize(
    ("adapter", "trainable"),
    [
        # the counts PEFT prints for these (print_trainable_parameters in countless QLoRA tutorials)
        (dict(r=8, target_modules="qv"), 4_194_304),
        (dict(r=8, target_modules=["q_proj", "v_proj"], method="qlora"), 4_194_304),
        (dict(r=16, target_modules="qv"), 8_388_608),
        (dict(r=8, target_modules="all-linear"), 19_988_480),
        # DoRA adds one magnitude per output feature of each adapted layer: 32 * (4096 + 4096)
        (dict(r=8, target_modules="qv", method="dora"), 4_194_304 + 32 * 8192),
    ],
)
def test_llama_2_7b_counts_match_peft(llama_2_7b, adapter, trainable):
    shape = memory.model_shape(llama_2_7b, AdapterConfig(**adapter))
    assert shape.trainable_params == trainable
    assert shape.total_params == LLAMA_2_7B_PARAMS + trainable
    assert shape.num_layers == 32


def test_mistral_7b_counts_with_grouped_query_attention():
    hf = memory.AutoConfig.for_model(**MISTRAL_7B)
    shape = memory.model_shape(hf, AdapterConfig(r=8, target_modules="qv"))
    assert shape.trainable_params == 3_407_872  # v_proj is 4096 -> 1024 with 8 KV heads
    assert shape.total_params == MISTRAL_7B_PARAMS + 3_407_872


def test_modules_to_save_counts_the_full_copy(llama_2_7b):
    shape = memory.model_shape(llama_2_7b, AdapterConfig(r=8, target_modules="qv", modules_to_save=["lm_head"]))
    assert shape.trainable_params == 4_194_304 + 32000 * 4096


def test_full_fine_tuning_trains_every_parameter(llama_2_7b):
    shape = memory.model_shape(llama_2_7b, AdapterConfig(method="full"))
    assert shape.trainable_params == shape.total_params == LLAMA_2_7B_PARAMS
    assert shape.base_params == 0 and shape.adapted == ()


def test_full_fine_tuning_plans_state_for_every_weight_and_lora_for_its_adapter(llama_2_7b):
    """fp32 AdamW: 4 + 4 + 8 bytes per trainable parameter; full trains all 6.7B, LoRA (qv, r=8) 4.2M."""
    train = TrainConfig(precision="fp32", optimizer="adamw")
    full = memory.plan(ModelConfig(dtype="float32"), AdapterConfig(method="full"), train, llama_2_7b)
    lora = memory.plan(ModelConfig(dtype="float32"), AdapterConfig(r=8, target_modules="qv"), train, llama_2_7b)
    for planned, trainable in ((full, LLAMA_2_7B_PARAMS), (lora, 4_194_304)):
        assert planned["trainable_params"] == trainable
        assert planned["bytes"]["adapter_weights"] == 4 * trainable
        assert planned["bytes"]["gradients"] == 4 * trainable
        assert planned["bytes"]["optimizer_states"] == 8 * trainable
    assert full["bytes"]["base_weights"] == 0  # nothing frozen: every weight is trainable state
    assert lora["bytes"]["base_weights"] == 4 * LLAMA_2_7B_PARAMS
    zero3_full = next(row for row in full["per_gpu"] if row["zero_stage"] == 3 and not row["offload_optimizer"])
    assert zero3_full["stage3_gathered_layers"] == 2 * 4 * 202_383_360  # two decoder layers of fp32 weights
    assert full["per_gpu"][0]["gpu_total"] > lora["per_gpu"][0]["gpu_total"] + 12 * LLAMA_2_7B_PARAMS


def test_zero_paper_figure_1_numbers():
    """ZeRO paper, figure 1: 7.5B parameters, 64 GPUs, mixed-precision Adam (K=12)."""
    per_param = memory.trainable_bytes_per_param("bf16", "adamw", 0.9)
    assert per_param == {"weights": 2, "gradients": 2, "optimizer_states": 12}
    expected_gb = {0: 120.0, 1: 31.4, 2: 16.6, 3: 1.9}
    for stage, gb in expected_gb.items():
        row = memory.per_gpu_bytes(memory.Setting(stage, False, False), 64, base_bytes=0, trainable=7_500_000_000,
                                   per_param=per_param, layer_bytes=0, activations=0)
        assert row["gpu_total"] / GB == pytest.approx(gb, abs=0.06), stage


def test_optimizer_state_bytes_adamw_vs_sgd():
    assert memory.trainable_bytes_per_param("bf16", "sgd", 0.9)["optimizer_states"] == 8  # master + momentum
    assert memory.trainable_bytes_per_param("fp32", "adamw", 0.9)["optimizer_states"] == 8  # momentum + variance
    assert memory.trainable_bytes_per_param("fp32", "sgd", 0.9)["optimizer_states"] == 4
    assert memory.trainable_bytes_per_param("fp32", "sgd", 0.0)["optimizer_states"] == 0


def test_four_bit_bytes_follow_the_qlora_paper(llama_2_7b):
    assert memory.FOUR_BIT_BITS == 4.5
    assert memory.FOUR_BIT_DOUBLE_QUANT_BITS - 4 == pytest.approx(0.127, abs=5e-4)  # QLoRA paper, section 3
    shape = memory.model_shape(llama_2_7b, AdapterConfig(method="qlora"))
    embeddings_and_head = 2 * 32000 * 4096
    assert shape.quantizable_params == LLAMA_2_7B_PARAMS - embeddings_and_head - 65 * 4096  # no norms either
    bf16 = memory.base_weight_bytes(shape, "bfloat16", quantized=False, double_quant=False)
    nf4 = memory.base_weight_bytes(shape, "bfloat16", quantized=True, double_quant=False)
    nf4_dq = memory.base_weight_bytes(shape, "bfloat16", quantized=True, double_quant=True)
    assert bf16 == 2 * LLAMA_2_7B_PARAMS
    assert nf4_dq < nf4 < bf16 / 3
    assert nf4 - nf4_dq == pytest.approx(shape.quantizable_params * (0.5 - 0.127) / 8, rel=1e-3)


def test_offload_moves_optimizer_to_cpu_and_stage3_shards_the_base():
    per_param = memory.trainable_bytes_per_param("bf16", "adamw", 0.9)
    args = dict(base_bytes=8_000, trainable=1_000, per_param=per_param, layer_bytes=100, activations=50)
    stage2 = memory.per_gpu_bytes(memory.Setting(2, False, False), 4, **args)
    offload = memory.per_gpu_bytes(memory.Setting(2, True, False), 4, **args)
    assert offload["cpu_offloaded"] == stage2["gradients"] + stage2["optimizer_states"] == 500 + 3_000
    assert offload["gpu_total"] == stage2["gpu_total"] - 3_500
    stage3 = memory.per_gpu_bytes(memory.Setting(3, False, False), 4, **args)
    assert stage3["base_weights"] == 2_000 and stage3["stage3_gathered_layers"] == 200
    full = memory.per_gpu_bytes(memory.Setting(3, True, True), 4, **args)
    assert full["gpu_total"] == 200 + 50 and full["cpu_offloaded"] == 2_000 + 500 + 500 + 3_000


def test_plan_verdict_and_cheapest_setting(llama_2_7b):
    model = ModelConfig(dtype="bfloat16", max_seq_len=512, gradient_checkpointing=True)
    train = TrainConfig(precision="bf16", micro_batch_size=1, deepspeed={"stage": 2})
    lora = memory.plan(model, AdapterConfig(target_modules="qv"), train, llama_2_7b, num_gpus=2,
                       gpu_memory_gib=12)
    assert lora["verdict"] == "does not fit"  # 12.6 GiB of bf16 base weights on every GPU
    assert lora["cheapest_fitting"]["zero_stage"] == 3 and not lora["cheapest_fitting"]["offload_optimizer"]
    qlora = memory.plan(model, AdapterConfig(method="qlora", target_modules="qv"), train, llama_2_7b, num_gpus=1,
                        gpu_memory_gib=12)
    assert qlora["verdict"] == "fits" and qlora["cheapest_fitting"]["zero_stage"] == 0
    nothing = memory.plan(model, AdapterConfig(), train, llama_2_7b, num_gpus=1, gpu_memory_gib=1)
    assert nothing["verdict"] == "does not fit" and nothing["cheapest_fitting"] is None
    json.dumps(lora)


def test_gradient_checkpointing_shrinks_activations(llama_2_7b):
    shape = memory.model_shape(llama_2_7b, AdapterConfig(target_modules="qv"))
    full = memory.activation_bytes(shape, 4, 1024, 2, AdapterConfig(target_modules="qv"), False)
    checkpointed = memory.activation_bytes(shape, 4, 1024, 2, AdapterConfig(target_modules="qv"), True)
    assert checkpointed["total"] < full["total"] / 5  # the logits stay: 4 * 1024 * 32000 * (2 + 4 + 4)


def test_cli_plan_prints_json_for_a_model_config(demo_config_dict, tmp_path, capsys):
    path = tmp_path / "demo.yaml"
    path.write_text(json.dumps(demo_config_dict))
    code = cli.main(["plan", str(path), "adapter.target_modules=qv", "--model-config", str(LLAMA_2_7B),
                     "--gpu-memory-gib", "80", "--num-gpus", "2"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["verdict"] == "fits"
    assert out["trainable_params"] == 4_194_304 and out["num_gpus"] == 2
    assert {row["zero_stage"] for row in out["per_gpu"]} == {0, 1, 2, 3}
    assert cli.main(["plan", str(path), "--model-config", str(LLAMA_2_7B), "--gpu-memory-gib", "2"]) == 1


def test_every_valid_zero_setting_has_a_plan_row(demo_config_dict, tmp_path, capsys):
    """ZeRO-Offload works from stage 1 up; the configured row must exist for each (it used to crash at stage 1)."""
    path = tmp_path / "demo.yaml"
    path.write_text(json.dumps(demo_config_dict))
    for stage in (1, 2, 3):
        code = cli.main(["plan", str(path), f"train.deepspeed.stage={stage}", "train.deepspeed.offload_optimizer=true",
                         "--model-config", str(LLAMA_2_7B), "--gpu-memory-gib", "1000"])
        out = json.loads(capsys.readouterr().out)
        assert code == 0
        assert (out["configured"]["zero_stage"], out["configured"]["offload_optimizer"]) == (stage, True)
        assert out["configured"]["optimizer_states"] == 0 and out["configured"]["cpu_offloaded"] > 0


def test_cli_plan_names_a_missing_model_config(demo_config_dict, tmp_path, capsys):
    path = tmp_path / "demo.yaml"
    path.write_text(json.dumps(demo_config_dict))
    assert cli.main(["plan", str(path), "--model-config", str(tmp_path / "nope.json")]) == 2
    assert "configs/models/llama-2-7b.json" in capsys.readouterr().err


def test_peak_tensor_bytes_counts_live_storages_once_and_releases_dead_ones():
    import torch

    from pipelines.bench.memory import PeakTensorBytes

    mib = 2**20
    with PeakTensorBytes() as tracker:
        first = torch.zeros(mib // 4)  # 1 MiB of float32
        view = first[: mib // 8]  # a view shares the storage: not counted again
        view.add_(1)
        del first, view
        second = torch.ones(2 * mib // 4)  # 2 MiB, created after the first died
    assert tracker.peak == 2 * mib
    assert tracker.live == 2 * mib
    del second
    assert tracker.live == 0
