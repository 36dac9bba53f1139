"""The UMC active-inference trading agent, one :class:`AgentStrategy` of the engine.

At every bar it (1) scores how well MarketGI predicted this bar (coherence), (2) filters its latent
state with the encoder (carried from the last bar, never a re-encoded window), (3) stores the
sample, tagged agent (and, through the asymmetric gate, never an echo sample unless the gate is
off), (4) every ``update_every`` bars takes one free-energy step on a replay minibatch, (5) scores
sell / hold / buy by ``G^lambda = Risk + Ambiguity - lambda * InfoGain`` from MarketGI's
predictions, draws its action from ``softmax(-G / temperature)``, and (6) adapts lambda.

Ablations are configs (``ablation=``): ``full``, ``no_echo`` (no Echo population: no consensus
input, no echo samples), ``no_gate`` (echo samples reach MarketGI's updates), ``fixed_lambda``,
``no_info_gain`` (lambda = 0), ``no_macro`` (no regime input).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ..engine.features import FEATURE_NAMES
from ..engine.strategies import AgentContext, AgentStrategy, StrategyError, register_strategy
from . import objective
from .diagnostics import empowerment, update_size
from .echo import KINDS, EchoPopulation
from .fused import decide_nb
from .macro import MacrostateDetector, regime_cycles
from .market_gi import N_ACTIONS, MarketGI, NumpyGI, free_energy
from .schedule import LambdaSchedule, interval_hit

logger = logging.getLogger(__name__)

ABLATIONS = ("full", "no_echo", "no_gate", "fixed_lambda", "no_info_gain", "no_macro")
_COL = {n: i for i, n in enumerate(FEATURE_NAMES)}
OBS_NAMES = ("log_return", "log_volatility", "macd_over_price", "rsi", "bollinger_b", "log_volume_ratio")


def observation(row: np.ndarray, close: float) -> np.ndarray:
    """The model's observation (6,) from one bar's engine features (before z-scoring)."""
    band = row[_COL["bb_upper"]] - row[_COL["bb_lower"]]
    return np.array([
        row[_COL["log_return"]],
        math.log(max(row[_COL["volatility_20"]], 1e-8)),
        row[_COL["macd"]] / close,
        row[_COL["rsi_14"]] / 100.0 - 0.5,
        (close - row[_COL["bb_lower"]]) / band - 0.5 if band > 0 else 0.0,
        math.log(row[_COL["volume_ratio"]] + 1e-3),
    ])


@register_strategy
@dataclass
class UMCAgent(AgentStrategy):
    name: ClassVar[str] = "umc"

    ablation: str = "full"
    seed: int = 0
    latent: int = 8
    hidden: int = 32
    heads: int = 5
    beta: float = 1.0
    lr: float = 1e-3
    batch_size: int = 32
    replay_size: int = 10_000
    update_every: int = 32
    min_replay: int = 256
    temperature: float = 0.05
    pref_return: float = 0.05  # P*: preferred next-bar outcome, in units of the return's scale
    pref_var: float = 1.0
    lambda_base: float = 0.28
    lambda_min: float = 0.1
    lambda_max: float = 0.46
    coherence_smoothing: float = 0.01
    echo_size: int = 100
    echo_elite: float = 0.2
    echo_evolve_every: int = 1000
    n_regimes: int = 7
    empowerment_every: int = 5000
    empowerment_horizon: int = 5
    leakage_every: int = 50
    contraction_threshold: float = 1e-4
    fused: bool = True  # the compiled per-bar decision; False runs the NumPy reference path

    def __post_init__(self) -> None:
        problems = []
        if self.ablation not in ABLATIONS:
            problems.append(f"ablation={self.ablation!r} must be one of {ABLATIONS}")
        for name in ("latent", "hidden", "heads", "batch_size", "replay_size", "update_every", "echo_size",
                     "echo_evolve_every", "n_regimes", "empowerment_every", "empowerment_horizon", "leakage_every"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name}={getattr(self, name)!r} must be >= 1")
        if self.heads < 2:
            problems.append(f"heads={self.heads} must be >= 2 (the info gain is the heads' disagreement)")
        if not 0 < self.lambda_min <= self.lambda_base <= self.lambda_max:
            problems.append(f"need 0 < lambda_min <= lambda_base <= lambda_max, got {self.lambda_min}, "
                            f"{self.lambda_base}, {self.lambda_max}")
        for name in ("lr", "temperature", "pref_var", "beta"):
            if not getattr(self, name) > 0:
                problems.append(f"{name}={getattr(self, name)!r} must be > 0")
        if problems:
            raise StrategyError("umc: " + "; ".join(problems))

    # ------------------------------------------------------------------ naming
    @property
    def label(self) -> str:
        return "umc" if self.ablation == "full" else f"umc[{self.ablation}]"

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @property
    def uses_echo(self) -> bool:
        return self.ablation != "no_echo"

    @property
    def gate(self) -> bool:
        return self.ablation != "no_gate"

    # ------------------------------------------------------------------ life cycle
    def begin(self, context: AgentContext) -> None:
        torch.manual_seed(self.seed)
        self.rng = np.random.default_rng(self.seed)
        self.torch_gen = torch.Generator().manual_seed(self.seed)
        cfg = context.config
        self.position_size, self.max_position = cfg.position_size, cfg.max_position
        self.cost = cfg.fee_taker + cfg.slippage
        hist_f, hist_c = context.history_features, context.history_close
        ok = np.isfinite(hist_f).all(axis=1)
        if ok.sum() < 100:
            raise StrategyError(f"umc: {int(ok.sum())} complete bars before the window; it needs >= 100 to scale "
                                "its observations and fit the macrostates (start the data earlier, e.g. --dataset "
                                "binance:2024-01-01:2024-07-01 with the window from February)")
        obs_hist = np.array([observation(r, c) for r, c in zip(hist_f[ok], hist_c[ok], strict=True)])
        self.obs_mean, self.obs_std = obs_hist.mean(0), obs_hist.std(0) + 1e-12
        self.ret_mean, self.ret_scale = float(self.obs_mean[0]), float(self.obs_std[0])
        # regimes are always detected and reported; the no_macro ablation only drops them as an input
        fwd = np.r_[np.diff(np.log(hist_c)), np.nan]
        self.macro = MacrostateDetector(self.n_regimes, self.seed).fit(hist_f[ok], hist_c[ok], fwd[ok])
        self.ctx_dim = (self.n_regimes if self.ablation != "no_macro" else 0) + (1 if self.uses_echo else 0)
        self.obs_dim = len(OBS_NAMES)
        self.model = MarketGI(self.obs_dim, self.ctx_dim, self.latent, self.hidden, self.heads)  # float32 training
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        self.gi = NumpyGI(self.model)
        self.echo = EchoPopulation(self.echo_size, self.echo_elite, self.echo_evolve_every, cost=self.cost,
                                   seed=self.seed + 1) if self.uses_echo else None
        n, cap = context.bars, self.replay_size
        self.buf_s = np.zeros((cap, self.latent))
        self.buf_a = np.zeros(cap, np.int64)
        self.buf_o = np.zeros((cap, self.obs_dim))
        self.buf_c = np.zeros((cap, self.ctx_dim))
        self.buf_tag = np.zeros(cap, np.int8)  # 0 agent, 1 echo
        self.buf_n = 0
        self.buf_i = 0
        self.s = np.zeros(self.latent)
        self.a_prev = 1
        self.next_prior = None
        self.exposure = 0.0
        self.lam = 0.0 if self.ablation == "no_info_gain" else self.lambda_base
        self.schedule = LambdaSchedule(self.lambda_base, self.lambda_min, self.lambda_max)
        self.coherence = 0.9
        self.pred_mean = None
        self.pred_var = None
        self.t = 0
        self.hist = {k: np.zeros(n) for k in ("lambda", "info_gain", "coherence", "g_min", "echo_consensus")}
        self.hist["regime"] = np.zeros(n, np.int16)
        self.hist["action"] = np.zeros(n, np.int8)
        self.updates: list[tuple[int, float, float, float]] = []  # bar, free energy, recon, kl
        self.update_sizes: list[float] = []
        self.leakage: list[float] = []
        self.empowerment_hist: list[tuple[int, float]] = []
        self.echo_samples_offered = 0
        self.echo_samples_stored = 0
        self.eye = np.eye(self.n_regimes)
        self.inv_heads = 1.0 / self.heads
        self.drift = self.ret_mean / self.ret_scale
        self.cost_scaled = self.cost / self.ret_scale
        self.action_steps = (np.arange(N_ACTIONS) - 1) * self.position_size

    def _store(self, s_prev, a, obs, ctx, tag: int) -> None:
        i = self.buf_i
        self.buf_s[i], self.buf_a[i], self.buf_o[i], self.buf_c[i], self.buf_tag[i] = s_prev, a, obs, ctx, tag
        self.buf_i = (i + 1) % self.replay_size
        self.buf_n = min(self.buf_n + 1, self.replay_size)

    def step(self, features: np.ndarray, close: float) -> float:
        t = self.t
        obs = (observation(features, close) - self.obs_mean) / self.obs_std
        # (1) coherence: was this bar inside what MarketGI predicted for it?
        if self.pred_mean is not None:
            hit = interval_hit(obs, self.pred_mean, self.pred_var)
            self.coherence += self.coherence_smoothing * (hit - self.coherence)
        # context: regime and echo consensus, from data up to this bar
        regime = self.macro.label_bar(features, close)
        parts = []
        if self.ablation != "no_macro":
            parts.append(self.eye[regime])
        if self.echo is not None:
            self.echo.step(float(features[_COL["log_return"]]), close, float(features[_COL["volatility_20"]]))
            consensus = self.echo.consensus
            parts.append(np.array([consensus]))
        ctx = np.concatenate(parts) if parts else np.zeros(0)
        # (2) filter the latent state, carried from the last bar
        s_prev = self.s
        if self.next_prior is None:  # weights changed since the last decision (or first bar)
            self.next_prior = self.gi.prior(s_prev, self.a_prev).sum(0) * self.inv_heads
        u = self.rng.random()
        if self.fused:  # (2) + (5) in one compiled call
            g = self.gi
            s_new, a, exposure, ig_a, g_min, self.pred_mean, self.pred_var, next_prior = decide_nb(
                self.next_prior, obs, ctx, g.enc_w1, g.enc_b1, g.enc_w2, g.enc_b2, g.t_w1_s, g.t_w1_a, g.t_b1, g.t_w2,
                g.t_b2, g.em_w1, g.em_b1, g.em_w2, g.em_b2, self.exposure, self.position_size, self.max_position,
                self.drift, self.cost_scaled, self.pref_return, self.pref_var, self.lam, self.temperature, u)
        else:
            s_new, a, exposure, ig_a, g_min, self.pred_mean, self.pred_var, next_prior = self._decide_reference(obs, ctx, u)
        self.s = s_new
        # (3) samples, tagged; the gate keeps echo samples out of MarketGI's replay
        self._store(s_prev, self.a_prev, obs, ctx, 0)
        if self.echo is not None:
            self.echo_samples_offered += 1
            if not self.gate:
                self._store(s_prev, self.echo.sample_action(), obs, ctx, 1)
                self.echo_samples_stored += 1
        self.a_prev = a
        self.exposure = float(exposure)
        self.next_prior = next_prior
        # (4) learn (after deciding: this bar's decision used the weights before this bar's update)
        if t % self.update_every == 0 and self.buf_n >= self.min_replay:
            self._update(t)
        # (6) lambda
        if self.ablation not in ("fixed_lambda", "no_info_gain"):
            self.lam = self.schedule.step(self.lam, float(ig_a), self.coherence)
        if self.empowerment_every and t % self.empowerment_every == 0:
            self.empowerment_hist.append((t, empowerment(self.gi, self.s, self.empowerment_horizon, 4, self.rng)))
        h = self.hist
        h["lambda"][t], h["info_gain"][t], h["coherence"][t], h["g_min"][t] = self.lam, ig_a, self.coherence, g_min
        h["regime"][t], h["action"][t] = regime, a
        h["echo_consensus"][t] = consensus if self.echo is not None else 0.0
        self.t = t + 1
        return self.exposure

    def _decide_reference(self, obs: np.ndarray, ctx: np.ndarray, u: float):
        """The decision in plain NumPy (the pure functions of ``objective``); :func:`decide_nb` fuses it."""
        s = self.gi.encode(self.next_prior, obs, ctx)
        nxt = self.gi.next_states(s)  # (A, E, L)
        mean_o, var_o = self.gi.emit(nxt)  # (A, E, D)
        mr = mean_o[:, :, 0]
        r_mean = mr.sum(1) * self.inv_heads
        r_var = var_o[:, :, 0].sum(1) * self.inv_heads + np.maximum((mr * mr).sum(1) * self.inv_heads - r_mean**2, 0.0)
        exposures = np.minimum(np.maximum(self.exposure + self.action_steps, 0.0), self.max_position)
        pnl_mean = exposures * (self.drift + r_mean) - self.cost_scaled * np.abs(exposures - self.exposure)
        pnl_var = exposures**2 * r_var + self.pref_var
        risk = objective.risk(pnl_mean, pnl_var, self.pref_return, self.pref_var)
        ig = objective.info_gain(mean_o, var_o)
        g = objective.expected_free_energy(risk, objective.ambiguity(var_o), ig, self.lam)
        w = np.exp(-(g - g.min()) / self.temperature)
        a = min(int(np.searchsorted(np.cumsum(w), u * w.sum())), N_ACTIONS - 1)
        ma = mean_o[a]
        pred_mean = ma.sum(0) * self.inv_heads
        pred_var = var_o[a].sum(0) * self.inv_heads + np.maximum((ma * ma).sum(0) * self.inv_heads - pred_mean**2, 0.0)
        return s, a, exposures[a], float(ig[a]), float(g.min()), pred_mean, pred_var, nxt[a].sum(0) * self.inv_heads

    # ------------------------------------------------------------------ learning
    def _batch(self):
        idx = self.rng.integers(0, self.buf_n, self.batch_size)
        mask = (self.rng.random((self.heads, self.batch_size)) < 0.5).astype(np.float32)
        mask[:, mask.sum(0) == 0] = 1.0
        f32 = np.float32
        return (torch.from_numpy(self.buf_s[idx].astype(f32)), torch.from_numpy(self.buf_a[idx]),
                torch.from_numpy(self.buf_o[idx].astype(f32)), torch.from_numpy(self.buf_c[idx].astype(f32)),
                torch.from_numpy(mask), self.buf_tag[idx])

    def _update(self, t: int) -> None:
        s, a, o, c, mask, tag = self._batch()
        if len(self.updates) % self.leakage_every == 0:
            self.leakage.append(self._leakage(s, a, o, c, mask, tag))
        before = torch.nn.utils.parameters_to_vector(self.model.parameters()).detach()
        loss, parts = free_energy(self.model, s, a, o, c, mask, self.beta, self.torch_gen)
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 10.0)
        self.opt.step()
        after = torch.nn.utils.parameters_to_vector(self.model.parameters()).detach()
        self.update_sizes.append(update_size([before.numpy()], [after.numpy()]))
        self.updates.append((t, float(loss.detach()), parts["recon"], parts["kl"]))
        self.gi.refresh(self.model)
        self.next_prior = None

    def _leakage(self, s, a, o, c, mask, tag) -> float:
        """KL between MarketGI's predictions after one SGD step on the batch as drawn and after one on its
        agent rows only, on those agent rows. Exactly 0 when the batch holds no echo sample (the gate)."""
        agent = torch.from_numpy(tag == 0)
        if not bool(agent.any()):
            return 0.0
        params = dict(self.model.named_parameters())

        def stepped(rows):
            g = torch.Generator().manual_seed(self.seed + len(self.updates))
            loss, _ = free_energy(self.model, s[rows], a[rows], o[rows], c[rows], mask[:, rows], self.beta, g)
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            return {k: (v - self.lr * gr if gr is not None else v).detach()
                    for (k, v), gr in zip(params.items(), grads, strict=True)}

        all_rows = torch.ones_like(agent)
        p_all, p_agent = stepped(all_rows), stepped(agent)
        with torch.no_grad():
            def predict(p):
                m = _Bound(self.model, p)
                mu_q, _ = m.encode(m.transition(s[agent], a[agent]).mean(0), o[agent], c[agent])
                return m.emit(mu_q)

            mu1, lv1 = predict(p_all)
            mu2, lv2 = predict(p_agent)
            kl = 0.5 * (lv2 - lv1 + (lv1.exp() + (mu1 - mu2) ** 2) / lv2.exp() - 1.0).sum(-1)
        return float(kl.mean())

    # ------------------------------------------------------------------ results
    def finish(self) -> dict[str, Any]:
        n = self.t
        h = {k: v[:n] for k, v in self.hist.items()}
        names = self.macro.names_
        cycles = regime_cycles(h["regime"], names)
        upd = np.array(self.update_sizes) if self.update_sizes else np.zeros(0)
        fe = np.array([u[1] for u in self.updates]) if self.updates else np.zeros(0)
        emp = np.array([e[1] for e in self.empowerment_hist]) if self.empowerment_hist else np.zeros(0)
        leak = np.array(self.leakage) if self.leakage else np.zeros(1)
        echo = self.echo.history if self.echo is not None else None
        metrics = {
            "lambda_mean": float(h["lambda"].mean()),
            "lambda_min": float(h["lambda"].min()),
            "lambda_max": float(h["lambda"].max()),
            "info_gain_mean": float(h["info_gain"].mean()),
            "coherence_mean": float(h["coherence"].mean()),
            "leakage": float(leak.max()),
            "leakage_mean": float(leak.mean()),
            "empowerment_mean": float(emp.mean()) if emp.size else math.nan,
            "free_energy_first": float(fe[: max(1, fe.size // 10)].mean()) if fe.size else math.nan,
            "free_energy_last": float(fe[-max(1, fe.size // 10):].mean()) if fe.size else math.nan,
            "updates": float(len(self.updates)),
            "update_size_mean": float(upd.mean()) if upd.size else math.nan,
            "contraction_share": float((upd < self.contraction_threshold).mean()) if upd.size else math.nan,
            "regimes_seen": float(cycles["regimes_seen"]),
            "echo_samples_offered": float(self.echo_samples_offered),
            "echo_samples_stored": float(self.echo_samples_stored),
            "buy_share": float((h["action"] == 2).mean()),
            "sell_share": float((h["action"] == 0).mean()),
        }
        return {
            "metrics": metrics,
            "regime_names": names,
            "regimes": cycles,
            "echo": None if echo is None else {
                "kinds": list(KINDS), "bars": echo.bars, "fitness_mean": echo.fitness_mean,
                "fitness_max": echo.fitness_max, "elite_mean": echo.elite_mean, "mix": echo.mix},
            "empowerment": [[int(b), float(v)] for b, v in self.empowerment_hist],
            "free_energy": [[int(u[0]), float(u[1])] for u in self.updates[:: max(1, len(self.updates) // 500)]],
            "series": {k: v for k, v in h.items()},
        }


class _Bound:
    """A view of a MarketGI with other parameter values (for the leakage probe's one-step models)."""

    def __init__(self, model: MarketGI, params: dict) -> None:
        self.model, self.p = model, params

    def encode(self, prior_mu, obs, ctx):
        p = self.p
        h = torch.tanh(torch.nn.functional.linear(torch.cat([prior_mu, obs, ctx], -1), p["enc1.weight"], p["enc1.bias"]))
        mu, logvar = torch.nn.functional.linear(h, p["enc2.weight"], p["enc2.bias"]).chunk(2, -1)
        return mu, logvar.clamp(-8.0, 4.0)

    def transition(self, s, action):
        p = self.p
        x = torch.cat([s, torch.nn.functional.one_hot(action, N_ACTIONS).to(s.dtype)], -1)
        h = torch.tanh(torch.matmul(x.unsqueeze(0), p["t_w1"]) + p["t_b1"])
        return s.unsqueeze(0) + torch.matmul(h, p["t_w2"]) + p["t_b2"]

    def emit(self, s):
        p = self.p
        h = torch.tanh(torch.nn.functional.linear(s, p["em1.weight"], p["em1.bias"]))
        mu, logvar = torch.nn.functional.linear(h, p["em2.weight"], p["em2.bias"]).chunk(2, -1)
        return mu, logvar.clamp(-8.0, 4.0)
