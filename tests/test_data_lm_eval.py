"""lm-evaluation-harness's own tasks on local files, run for real on a tiny random Qwen3 checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from cleaner.data.cli import main
from cleaner.data.lm_eval_tasks import lm_eval_tasks_dir, local_task_config, run_lm_eval
from cleaner.data.schema import DataError, write_jsonl_atomic
from cleaner.data.sources import read_table

FIX = Path(__file__).parent / "fixtures" / "datasets"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A 1-layer random Qwen3 model with a byte-level BPE tokenizer trained here (save_pretrained)."""
    out = tmp_path_factory.mktemp("tiny_qwen3")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["Question: Find the value of 3 \\cdot 111. Answer: \\boxed{333}", "What is the correct answer? (A) Na"] * 20
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    config = Qwen3Config(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=2048,
                         eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(out)
    return out


def test_local_task_config_includes_lm_evals_own_task(tmp_path) -> None:
    cfg = local_task_config("gpqa_diamond_cot_zeroshot", FIX / "aime25_test.jsonl")
    assert cfg["include"] == str(lm_eval_tasks_dir() / "gpqa/cot_zeroshot/gpqa_diamond_cot_zeroshot.yaml")
    assert cfg["dataset_path"] == "json" and cfg["dataset_name"] is None and cfg["test_split"] is None
    assert local_task_config("aime24", FIX / "aime_2024.parquet")["dataset_path"] == "parquet"
    with pytest.raises(DataError, match="unsupported lm-eval task"):
        local_task_config("mmlu", FIX / "aime_2024.parquet")
    with pytest.raises(DataError, match="not found"):
        local_task_config("aime24", tmp_path / "missing.jsonl")


def test_run_lm_eval_on_local_files(tiny_model: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    gpqa = write_jsonl_atomic(read_table(str(FIX / "gpqa_diamond.csv")).to_pylist(), tmp_path / "gpqa.jsonl")
    out = tmp_path / "lm_eval.json"
    doc = run_lm_eval(
        tiny_model, ["aime24", "gpqa_diamond_cot_zeroshot"], out,
        data_files={"aime24": FIX / "aime_2024.parquet", "gpqa_diamond_cot_zeroshot": gpqa},
        limit=2, max_gen_toks=4, device="cpu", dtype="float32", task_dir=tmp_path / "tasks",
        datasets_cache_dir=tmp_path / "hf_cache", bootstrap_iters=0,
    )
    assert json.loads(out.read_text()) == doc
    aime, gpqa_res = doc["tasks"]["aime24"], doc["tasks"]["gpqa_diamond_cot_zeroshot"]
    assert aime["primary_metric"] == "exact_match,none" and 0.0 <= aime["value"] <= 1.0
    assert (aime["n_samples"], aime["n_docs"]) == (2, 3)
    assert gpqa_res["primary_metric"] == "exact_match,flexible-extract"
    assert set(gpqa_res["metrics"]) == {"exact_match,strict-match", "exact_match,flexible-extract"}
    assert (gpqa_res["n_samples"], gpqa_res["n_docs"]) == (2, 3)
    assert doc["gen_kwargs"] == {"max_gen_toks": 4} and doc["apply_chat_template"] is True
    written = yaml.safe_load((tmp_path / "tasks" / "aime24.yaml").read_text())
    assert written["dataset_kwargs"]["data_files"] == str((FIX / "aime_2024.parquet").resolve())
    # the CLI runs the same harness
    cli_out = tmp_path / "cli.json"
    assert main(["data", "lm-eval", "--model", str(tiny_model), "--tasks", "aime24", "--data-file",
                 f"aime24={FIX / 'aime_2024.parquet'}", "--out", str(cli_out), "--limit", "1",
                 "--max-gen-toks", "2", "--device", "cpu", "--dtype", "float32", "--cache-dir", str(tmp_path)]) == 0
    assert (tmp_path / "lm_eval").is_dir()
    assert json.loads(cli_out.read_text())["tasks"]["aime24"]["n_samples"] == 1


def test_run_lm_eval_argument_errors(tiny_model: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="no local data file for task\\(s\\) \\['aime25'\\]"):
        run_lm_eval(tiny_model, ["aime25"], tmp_path / "x.json")
    with pytest.raises(DataError, match="not being run"):
        run_lm_eval(tiny_model, ["aime24"], tmp_path / "x.json", data_files={"aime25": FIX / "aime25_test.jsonl"})
    with pytest.raises(DataError, match="model directory not found"):
        run_lm_eval(tmp_path / "nope", ["aime24"], tmp_path / "x.json", data_files={"aime24": FIX / "aime_2024.parquet"})
