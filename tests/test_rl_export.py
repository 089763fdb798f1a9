"""forseti.rl policies exported to ONNX: the file, run in onnxruntime on a batch of observations,
gives what SB3's ``predict(obs, deterministic=True)`` gives for the checkpoint's policy (exactly
for PPO's discrete CartPole actions; within 1e-5 for SAC's squashed, rescaled Pendulum torques).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
import torch

import forseti as fs
from forseti.errors import ValidationError

torch.set_num_threads(1)


def session(reg: fs.EntityRegistry, export: fs.Entity) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(
        reg.read_blob(export.artifact), options, providers=["CPUExecutionProvider"]
    )  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """A PPO CartPole checkpoint and a SAC Pendulum checkpoint (briefly trained) in SQLite."""
    path = tmp_path_factory.mktemp("rl-export")
    reg = fs.open(f"sqlite:///{path / 'rl.db'}", blob_dir=path / "blobs")
    ppo = fs.rl.train_sb3(
        reg,
        "PPO",
        "CartPole-v1",
        fs.rl.preset("PPO", "CartPole-v1", n_epochs=4),
        1024,
        progress=False,
    )
    sac_config = fs.rl.SB3ConfigEntity(
        algorithm_path="SAC",
        hyperparameters={
            "learning_starts": 100,
            "buffer_size": 1000,
            "batch_size": 32,
            "policy_kwargs": {"net_arch": [32, 32]},
        },
    )
    sac = fs.rl.train_sb3(reg, "SAC", "Pendulum-v1", sac_config, 300, progress=False)
    yield SimpleNamespace(
        reg=reg,
        path=path,
        ppo=fs.rl.latest_checkpoint(reg, ppo),
        sac=fs.rl.latest_checkpoint(reg, sac),
    )
    reg.close()


def test_ppo_cartpole_onnx_actions_equal_predict(trained: SimpleNamespace) -> None:
    reg, ckpt = trained.reg, trained.ppo
    export = fs.rl.export_policy(reg, ckpt)
    obs = np.random.default_rng(0).uniform(-2.0, 2.0, size=(512, 4)).astype(np.float32)
    (onnx_actions,) = session(reg, export).run(["action"], {"observation": obs})
    expected, _ = fs.rl.load_policy(reg, ckpt).predict(obs, deterministic=True)
    assert onnx_actions.shape == expected.shape == (512,)
    assert np.array_equal(onnx_actions.astype(np.int64), expected.astype(np.int64))
    assert 0 < expected.sum() < 512  # both actions occur: the comparison is not trivial
    # a single observation (batch of 1) too
    (one,) = session(reg, export).run(["action"], {"observation": obs[:1]})
    assert one.shape == (1,) and int(one[0]) == int(expected[0])


def test_sac_pendulum_onnx_actions_match_predict(trained: SimpleNamespace) -> None:
    reg, ckpt = trained.reg, trained.sac
    export = fs.rl.export_policy(reg, ckpt)
    rng = np.random.default_rng(1)
    theta = rng.uniform(-np.pi, np.pi, 256)
    obs = np.stack([np.cos(theta), np.sin(theta), rng.uniform(-8.0, 8.0, 256)], axis=1).astype(
        np.float32
    )
    (onnx_actions,) = session(reg, export).run(["action"], {"observation": obs})
    expected, _ = fs.rl.load_policy(reg, ckpt).predict(obs, deterministic=True)
    assert onnx_actions.shape == expected.shape == (256, 1)
    np.testing.assert_allclose(onnx_actions, expected, rtol=0, atol=1e-5)
    assert (np.abs(expected) <= 2.0).all() and np.ptp(
        expected
    ) > 0.01  # torques within the bounds, varied


def test_ppo_pendulum_onnx_actions_are_clipped_like_predict(tmp_path: Path) -> None:
    """A Gaussian (unsquashed) Box policy: predict clips the mean to the bounds; so does ONNX."""
    with fs.open("memory://", blob_dir=tmp_path / "blobs") as reg:
        config = fs.rl.PPOConfigEntity(n_steps=64, batch_size=64, n_epochs=1)
        run = fs.rl.train_sb3(reg, "PPO", "Pendulum-v1", config, 64, progress=False)
        ckpt = fs.rl.latest_checkpoint(reg, run)
        model = fs.rl.load_policy(reg, ckpt)
        with torch.no_grad():  # push the mean's bias beyond the bounds for half the torques
            model.policy.action_net.bias.fill_(1.9)
            model.policy.action_net.weight.mul_(20.0)
        rng = np.random.default_rng(2)
        theta = rng.uniform(-np.pi, np.pi, 128)
        obs = np.stack([np.cos(theta), np.sin(theta), rng.uniform(-8, 8, 128)], 1).astype(
            np.float32
        )
        expected, _ = model.predict(obs, deterministic=True)
        module = fs.rl.PolicyActions(model.policy, model.action_space).eval()
        with torch.no_grad():
            actions = module(torch.from_numpy(obs)).numpy()
        assert (expected == 2.0).any() and (np.abs(expected) < 2.0).any()  # clipped and not
        np.testing.assert_allclose(actions, expected, rtol=0, atol=1e-6)
        export = fs.rl.export_policy(reg, ckpt)  # the stored weights: within the bounds or not
        (onnx_actions,) = session(reg, export).run(["action"], {"observation": obs})
        stored, _ = fs.rl.load_policy(reg, ckpt).predict(obs, deterministic=True)
        np.testing.assert_allclose(onnx_actions, stored, rtol=0, atol=1e-5)
        assert (np.abs(onnx_actions) <= 2.0).all()


def test_export_entity_provenance_and_out_file(trained: SimpleNamespace, tmp_path: Path) -> None:
    reg, ckpt = trained.reg, trained.ppo
    out = tmp_path / "policy.onnx"
    export = fs.rl.export_policy(reg, ckpt, out=out)
    assert reg.get(export.ref) == export and export.format == "onnx"
    assert export.checkpoint == ckpt.ref and ckpt.ref in export.derived_from
    assert out.read_bytes() == reg.read_blob(export.artifact)
    assert export.checks and all(v <= 1e-5 for k, v in export.checks.items() if "diff" in k)
    inputs = session(reg, export).get_inputs()
    assert [i.name for i in inputs] == ["observation"] and inputs[0].shape[1:] == [4]


def test_policy_actions_module_is_what_predict_returns(trained: SimpleNamespace) -> None:
    """PolicyActions (what is exported) in torch, before any ONNX conversion."""
    model = fs.rl.load_policy(trained.reg, trained.sac)
    module = fs.rl.PolicyActions(model.policy, model.action_space).eval()
    obs = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, -3.0], [-1.0, 0.0, 8.0]], dtype=np.float32)
    with torch.no_grad():
        actions = module(torch.from_numpy(obs)).numpy()
    expected, _ = model.predict(obs, deterministic=True)
    np.testing.assert_allclose(actions, expected, rtol=0, atol=1e-6)
    # its parameters are the policy's, under the same names
    assert set(dict(module.named_parameters())) == set(dict(model.policy.named_parameters()))


def test_a_discrete_observation_space_cannot_be_exported(tmp_path: Path) -> None:
    with fs.open("memory://", blob_dir=tmp_path / "blobs") as reg:
        config = fs.rl.PPOConfigEntity(n_steps=64, batch_size=64, n_epochs=1)
        run = fs.rl.train_sb3(reg, "PPO", "CliffWalking-v1", config, 64, progress=False)
        before = len(reg.find(fs.Entity))
        with pytest.raises(ValidationError, match="Box observations"):
            fs.rl.export_policy(reg, fs.rl.latest_checkpoint(reg, run))
        assert len(reg.find(fs.Entity)) == before
