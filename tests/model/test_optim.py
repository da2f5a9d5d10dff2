"""The run's optimizer (model/optim.py): AdamW, or Muon for the blocks' matrices."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from model import optim
from model.errors import StateError
from model.gpt import GPT, GPTConfig
from model.train_config import TrainConfig
from model.trainer import Trainer
from tests.model.train_fixtures import tiny_config, write_tiny_shards


def _tiny() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=128))


def test_the_docstring_calls_the_configs_default_the_default() -> None:
    (field,) = [f for f in dataclasses.fields(TrainConfig) if f.name == "optimizer"]
    doc = optim.__doc__ or ""
    # the first line: "...: <the default's description> (the default), or ..."
    named = doc.splitlines()[0].split("(the default)")[0].rsplit(":", 1)[-1]
    assert str(field.default) in named.lower(), named
    assert f"`optimizer: {field.default}`, the default" in doc


def test_muon_takes_the_block_matrices_and_adamw_the_rest_each_once() -> None:
    m = _tiny()
    opt = m.configure_optimizer(0.1, 1e-3, (0.9, 0.95), "cpu", "muon")
    assert isinstance(opt, optim.Optimizers) and set(opt.parts) == {"muon", "adamw"}
    names = {id(p): n for n, p in m.named_parameters()}
    muon = [names[id(p)] for g in opt.parts["muon"].param_groups for p in g["params"]]
    assert sorted(muon) == sorted(
        f"transformer.h.{i}.{part}.weight"
        for i in range(2)
        for part in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    )
    adamw = [names[id(p)] for g in opt.parts["adamw"].param_groups for p in g["params"]]
    assert "transformer.wte.weight" in adamw and "transformer.wpe.weight" in adamw  # tied head
    assert not set(muon) & set(adamw)
    assert len(muon) + len(adamw) == len(list(m.parameters()))
    decay, no_decay = opt.parts["adamw"].param_groups
    assert all(p.dim() >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.dim() < 2 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    assert opt.parts["muon"].param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"


def test_the_composite_steps_sets_lr_and_round_trips_its_state() -> None:
    m = _tiny()
    opt = m.configure_optimizer(0.1, 1e-3, (0.9, 0.95), "cpu", "muon")
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    for group in opt.param_groups:  # what the trainer does every step
        group["lr"] = 2e-3
    assert all(g["lr"] == 2e-3 for o in optim.parts(opt) for g in o.param_groups)
    x = torch.randint(0, 128, (2, 16))
    _, loss = m(x, x)
    assert loss is not None
    loss.backward()
    opt.step()
    assert all(not torch.equal(before[n], p) for n, p in m.named_parameters() if p.dim() == 2)
    state = opt.state_dict()
    again = _tiny().configure_optimizer(0.1, 1e-3, (0.9, 0.95), "cpu", "muon")
    again.load_state_dict(state)
    assert again.state_dict()["muon"]["state"].keys() == state["muon"]["state"].keys()
    for k, s in state["muon"]["state"].items():
        assert torch.equal(
            again.state_dict()["muon"]["state"][k]["momentum_buffer"], s["momentum_buffer"]
        )
    with pytest.raises(ValueError, match="no muon part"):
        again.load_state_dict({"adamw": state["adamw"]})


def test_a_run_resumed_with_another_optimizer_is_refused_by_name(tmp_path: Path) -> None:
    data = write_tiny_shards(tmp_path / "shards")
    cfg = tiny_config(data, tmp_path / "run", optimizer="adamw")
    first = Trainer(cfg, torch.device("cpu"), tmp_path / "run")
    first.train_step(cfg.lr)
    first.step = 1
    first.save()
    other = tiny_config(data, tmp_path / "run", optimizer="muon")
    with pytest.raises(StateError, match="optimizer=adamw, this run asks for optimizer=muon"):
        Trainer(other, torch.device("cpu"), tmp_path / "run").resume()
