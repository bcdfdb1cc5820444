"""The shared training loop: deterministic batches, checkpoints without pickles, exact resume."""

import json

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from dualpose.config import OptimConfig
from dualpose.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from dualpose.train.ema import EMATeacher, ema_decay
from dualpose.train.loop import LoopSettings, Trainer, build_optimizer, rank_batches


def test_rank_batches_partition_each_global_batch():
    a = rank_batches(10, 2, 2, 0, seed=1, epoch=0)
    b = rank_batches(10, 2, 2, 1, seed=1, epoch=0)
    assert len(a) == len(b) == 2  # 10 // 4, tail dropped
    both = np.concatenate([np.concatenate([x, y]) for x, y in zip(a, b)])
    assert len(set(both.tolist())) == 8
    assert not np.array_equal(np.concatenate(rank_batches(10, 2, 1, 0, 1, 0)),
                              np.concatenate(rank_batches(10, 2, 1, 0, 1, 1)))  # epochs differ
    # smaller than one global batch: wraps around, still one batch
    assert [len(x) for x in rank_batches(3, 4, 1, 0, 0, 0)] == [4]


def test_ema_schedule_and_update():
    assert ema_decay(0, 100, 0.999, 0.9999, 0.3) == 0.999
    assert ema_decay(15, 100, 0.999, 0.9999, 0.3) == pytest.approx(0.99945)
    assert ema_decay(30, 100, 0.999, 0.9999, 0.3) == 0.9999
    student = torch.nn.Linear(2, 2)
    teacher = EMATeacher(student)
    with torch.no_grad():
        student.weight.add_(1.0)
    before = teacher.module.weight.clone()
    teacher.update(student, 0.9)
    torch.testing.assert_close(teacher.module.weight, 0.9 * before + 0.1 * student.weight)
    assert not teacher.module.weight.requires_grad and not teacher.training


def test_ema_update_covers_every_tensor_and_keeps_the_teacher_dtype():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    teacher = EMATeacher(student)
    teacher.module.double()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    before = {n: p.clone() for n, p in teacher.module.named_parameters()}
    teacher.update(student, 0.75)
    for name, p in student.named_parameters():
        t = dict(teacher.module.named_parameters())[name]
        assert t.dtype == torch.float64
        torch.testing.assert_close(t, 0.75 * before[name] + 0.25 * p.detach().double())


def test_ema_update_follows_the_student_step_after_step_and_names_a_mismatch():
    """The pairing is built once and reused: later student changes still reach the teacher (one
    foreach call over every tensor), and a student without the teacher's parameters is refused."""
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    teacher = EMATeacher(student)
    for step in range(3):
        with torch.no_grad():
            for p in student.parameters():
                p.add_(1.0)
        before = [p.clone() for p in teacher.module.parameters()]
        teacher.update(student, 0.5)
        for t, b, s in zip(teacher.module.parameters(), before, student.parameters()):
            torch.testing.assert_close(t, 0.5 * b + 0.5 * s.detach())
    assert "teacher" not in dict(student.named_modules()) and len(list(teacher.parameters())) == 4
    with pytest.raises(ValueError, match=r"the student has no parameters \['0.weight'"):
        teacher.update(torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(3, 4)), 0.5)


@pytest.mark.parametrize("name", ["adamw", "adam"])
def test_optimizer_uses_the_fused_kernel_and_matches_the_plain_update(name):
    """build_optimizer takes PyTorch's fused Adam(W) where it exists (CPU since torch 2.4): the same
    update as the plain per-tensor implementation, to fp32 rounding, over several steps."""
    cfg = OptimConfig(name=name, lr=1e-2, weight_decay=0.05)
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.GELU(), torch.nn.Linear(16, 3)))
    fast = build_optimizer(models[0].parameters(), cfg)
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    plain = cls(models[1].parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False)
    assert isinstance(fast, cls) and fast.defaults["fused"] is True
    start = models[0][0].weight.detach().clone()
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.randn(8, 5, generator=gen)
        for model, opt in zip(models, (fast, plain)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert (models[0][0].weight - start).abs().max() > 1e-3  # the steps did move the weights


def _toy(tmp_path, stop_at=None, resume=True):
    torch.manual_seed(0)
    acc = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = build_optimizer(model.parameters(), OptimConfig(lr=1e-2))
    model, opt = acc.prepare(model, opt)
    data = torch.randn(40, 4, generator=torch.Generator().manual_seed(3))
    target = data.sum(1, keepdim=True)

    def make_batch(idx, step):
        noise = torch.randn(len(idx), 4, generator=torch.Generator().manual_seed(step)) * 0.01
        return {"x": data[idx] + noise, "y": target[idx]}

    def loss_fn(batch, step):
        loss = torch.nn.functional.mse_loss(model(batch["x"]), batch["y"])
        return loss, {}

    def validate(epoch):
        with torch.no_grad():
            v = float(torch.nn.functional.mse_loss(model(data), target))
        return {"val": v, "selection": v}

    def stopper(record):
        if stop_at is not None and record["step"] >= stop_at:
            raise KeyboardInterrupt

    settings = LoopSettings(epochs=3, batch_size=4, grad_accum=2, save_every_steps=2, seed=0,
                            run_dir=tmp_path, resume=resume, progress=False)
    trainer = Trainer(acc, settings, model, opt, 40, make_batch, loss_fn, 0.9, validate=validate,
                      callbacks=[stopper])
    return trainer, acc.unwrap_model(model)


def test_resume_is_exact(tmp_path):
    full, full_model = _toy(tmp_path / "full")
    state = full.fit()
    assert state.step == 15  # 40 / 4 = 10 micro-batches -> 5 steps per epoch, 3 epochs
    assert [r["epoch"] for r in state.history if r["kind"] == "validation"] == [0, 1, 2]

    interrupted, _ = _toy(tmp_path / "cut", stop_at=7)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    assert latest_checkpoint(tmp_path / "cut" / "checkpoints").name == "step-00000006"
    resumed, resumed_model = _toy(tmp_path / "cut")
    state2 = resumed.fit()
    for a, b in zip(full_model.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)
    def strip(history):  # throughput is a timing, not a result
        return [{k: v for k, v in r.items() if k != "seq_per_s"} for r in history]

    assert state2.best == state.best and strip(state2.history) == strip(state.history)


def test_checkpoints_are_safetensors_and_json_and_pruned(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, {"m": model}, opt, None, {"note": step}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]
    ckpt = latest_checkpoint(tmp_path)
    assert sorted(p.name for p in ckpt.iterdir()) == ["state.json", "tensors.safetensors"]
    assert json.loads((ckpt / "state.json").read_text())["extra"] == {"note": 4}
    model2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.5)
    load_checkpoint(ckpt, {"m": model2}, opt2)
    assert torch.equal(model.weight, model2.weight)
    assert opt2.param_groups[0]["lr"] == 0.1
    s1, s2 = opt.state_dict()["state"][0], opt2.state_dict()["state"][0]
    assert torch.equal(s1["exp_avg"], s2["exp_avg"]) and float(s1["step"]) == float(s2["step"])
    with pytest.raises(KeyError, match="does not match module 'm'"):
        load_checkpoint(ckpt, {"m": torch.nn.Linear(3, 3)})
