"""The UMC agent: each part alone (free energy, G^lambda terms, lambda schedule, Echo, gate, macrostates,
empowerment), the fused decision against the NumPy reference, no look-ahead through the engine, and a
short end-to-end run."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch

from umc_backtest.agent import objective
from umc_backtest.agent.diagnostics import gaussian_mixture_mi
from umc_backtest.agent.echo import KINDS, EchoPopulation
from umc_backtest.agent.macro import MacrostateDetector, name_regimes, regime_cycles
from umc_backtest.agent.market_gi import MarketGI, NumpyGI, free_energy
from umc_backtest.agent.schedule import LambdaSchedule, interval_hit
from umc_backtest.agent.umc import UMCAgent
from umc_backtest.data.synthetic import generate_candles
from umc_backtest.engine.backtest import prepare_market_data, run_backtest
from umc_backtest.engine.config import EngineConfig, RiskLimits
from umc_backtest.engine.strategies import StrategyError, make_strategy

NO_RISK = EngineConfig(risk=RiskLimits.off())
SMALL = {"update_every": 8, "min_replay": 64, "empowerment_every": 500, "echo_evolve_every": 200, "leakage_every": 5}


def _data(days=4, history_days=1, seed=1):
    df = generate_candles("2023-03-01", periods=days * 1440, seed=seed)
    return df, prepare_market_data(df, "1m", warmup=history_days * 1440)


# ------------------------------------------------------------------ MarketGI
def test_free_energy_decreases_on_a_learnable_series():
    torch.manual_seed(0)
    t = np.arange(2000)
    obs = np.column_stack([np.sin(t / 15), np.cos(t / 15), np.sin(t / 40)]).astype(np.float32)
    model = MarketGI(obs_dim=3, ctx_dim=0, latent=4, hidden=32, heads=3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    o = torch.from_numpy(obs)
    s_prev = torch.zeros(len(obs), 4)
    a = torch.ones(len(obs), dtype=torch.long)
    ctx = torch.zeros(len(obs), 0)
    mask = torch.ones(3, len(obs))
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(300):
        idx = torch.randint(0, len(obs), (64,), generator=gen)
        loss, _ = free_energy(model, s_prev[idx], a[idx], o[idx], ctx[idx], mask[:, idx], 1.0, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert np.mean(losses[-20:]) < np.mean(losses[:20]) - 2.0


# ------------------------------------------------------------------ G^lambda terms
def test_g_prefers_the_action_whose_predicted_outcome_matches_the_preference():
    # three actions: predicted outcomes -0.5, 0.0, +0.5 (same spread); P* = N(+0.5, 1)
    r = objective.risk(np.array([-0.5, 0.0, 0.5]), np.ones(3), 0.5, 1.0)
    np.testing.assert_allclose(r, [0.5, 0.125, 0.0])
    same = np.ones((3, 4, 2))
    g = objective.expected_free_energy(r, objective.ambiguity(same), objective.info_gain(np.zeros((3, 4, 2)), same),
                                       0.28)
    assert int(np.argmin(g)) == 2
    p = objective.softmax_policy(g, 0.1)
    assert p[2] > p[1] > p[0] and math.isclose(p.sum(), 1.0)


def test_info_gain_is_zero_when_the_heads_agree_and_grows_with_disagreement():
    var = np.ones((1, 5, 3))
    agree = np.tile(np.array([0.3, -1.0, 2.0]), (1, 5, 1))
    assert objective.info_gain(agree, var)[0] == 0.0
    gains = []
    for spread in (0.1, 0.5, 1.0, 2.0):
        means = agree + spread * np.linspace(-1, 1, 5)[None, :, None]
        gains.append(objective.info_gain(means, var)[0])
    assert gains[0] > 0 and all(b > a for a, b in itertools.pairwise(gains))
    # golden: Var over 5 heads of spread*linspace(-1,1,5) = spread^2 * 0.5
    np.testing.assert_allclose(gains[2], 0.5 * 3 * math.log1p(0.5))


def test_ambiguity_is_the_gaussian_entropy():
    var = np.full((2, 3, 4), 2.0)
    np.testing.assert_allclose(objective.ambiguity(var), 4 * 0.5 * math.log(2 * math.pi * math.e * 2.0))


# ------------------------------------------------------------------ lambda schedule
def test_lambda_schedule_transitions():
    s = LambdaSchedule()
    assert s.step(0.28, info_gain=0.001, coherence=0.9) == pytest.approx(0.308)  # under-exploring: x1.1
    assert s.step(0.28, info_gain=0.5, coherence=0.5) == pytest.approx(0.252)  # incoherent: x0.9
    assert s.step(0.40, info_gain=0.5, coherence=0.9) == pytest.approx(0.40 + 0.1 * (0.28 - 0.40))  # relax
    assert s.step(0.45, info_gain=0.0, coherence=0.9) == 0.46  # clipped at the top
    assert s.step(0.105, info_gain=0.5, coherence=0.1) == 0.1  # and at the bottom
    lam = 0.28
    for _ in range(200):
        lam = s.step(lam, 0.5, 0.9)
    assert lam == pytest.approx(0.28)
    assert interval_hit(np.array([0.0, 3.0]), np.zeros(2), np.ones(2)) == 0.5


# ------------------------------------------------------------------ echo
def test_echo_evolution_keeps_the_elite_and_changes_the_mix():
    echo = EchoPopulation(size=100, evolve_every=10_000, seed=3)
    rng = np.random.default_rng(0)
    price = 100.0
    for _ in range(3000):
        r = rng.normal(0.0003, 0.002)  # a trending market: momentum and trend followers earn
        price *= math.exp(r)
        echo.step(r, price, 0.002)
    pnl = echo.pnl.copy()
    elite = np.argsort(-pnl, kind="stable")[:20]
    params_before = {i: (echo.kind[i], echo.fast[i], echo.slow[i], echo.thr[i]) for i in elite}
    mix_before = np.bincount(echo.kind, minlength=len(KINDS))
    echo.evolve()
    for i, p in params_before.items():  # the elite survive unchanged
        assert (echo.kind[i], echo.fast[i], echo.slow[i], echo.thr[i]) == p
    mix_after = np.bincount(echo.kind, minlength=len(KINDS))
    assert not np.array_equal(mix_before, mix_after)
    assert echo.history.mix[-1] == mix_after.tolist()
    assert echo.history.elite_mean[-1] == pytest.approx(pnl[elite].mean())
    assert set(echo.elite.tolist()) == set(elite.tolist())


# ------------------------------------------------------------------ gate
def test_gate_leakage_is_exactly_zero_with_the_gate_and_positive_without():
    _, data = _data(days=3)
    gated = UMCAgent(**SMALL)
    run_backtest(data, gated, NO_RISK)
    m = gated.finish()["metrics"]
    assert m["leakage"] == 0.0 and m["echo_samples_stored"] == 0 and len(gated.leakage) > 5
    assert (gated.buf_tag[: gated.buf_n] == 0).all()
    open_gate = UMCAgent(ablation="no_gate", **SMALL)
    run_backtest(data, open_gate, NO_RISK)
    m2 = open_gate.finish()["metrics"]
    assert m2["echo_samples_stored"] > 0 and m2["leakage"] > 0.0
    assert (open_gate.buf_tag[: open_gate.buf_n] == 1).any()


# ------------------------------------------------------------------ macrostates
def test_macro_detector_is_fitted_on_past_data_only_and_labels_causally():
    df, data = _data(days=3)
    s = data.start
    fwd = np.r_[np.diff(np.log(data.close[:s])), np.nan]
    det = MacrostateDetector(7, seed=0).fit(data.features[:s][60:], data.close[:s][60:], fwd[60:])
    changed = df.copy()
    changed.loc[s + 1000 :, ["open", "high", "low", "close"]] *= 1.3
    data2 = prepare_market_data(changed, "1m", warmup=s)
    det2 = MacrostateDetector(7, seed=0).fit(data2.features[:s][60:], data2.close[:s][60:], fwd[60:])
    np.testing.assert_array_equal(det.centroids_, det2.centroids_)  # the window does not enter the fit
    labels = [det.label_bar(data.features[t], data.close[t]) for t in range(s, s + 1000)]
    labels2 = [det2.label_bar(data2.features[t], data2.close[t]) for t in range(s, s + 1000)]
    assert labels == labels2
    assert len(set(det.names_)) == 7


def test_regime_names_and_cycles_golden():
    names = name_regimes(np.array([2.0, -2.0, 0.0, 0.0, 2.0]), np.array([0.0, 0.0, 3.0, -3.0, 3.0]))
    assert names == ["MARKUP", "MARKDOWN", "DISTRIBUTION", "ACCUMULATION", "BREAKOUT"]
    assert name_regimes(np.array([0.0, 0.0, 2.0, -2.0]), np.zeros(4)) == ["RANGE-1", "RANGE-2", "MARKUP", "MARKDOWN"]
    cyc = regime_cycles(np.array([0, 0, 1, 1, 1, 2, 0, 0]), ["A", "B", "C"])
    assert cyc["runs"] == 4 and cyc["regimes_seen"] == 3
    assert cyc["distribution"] == {"A": 0.5, "B": 0.375, "C": 0.125}
    assert cyc["mean_run_bars"]["A"] == 2.0 and cyc["stability"] == pytest.approx(4 / 7)
    assert cyc["top_cycles"][0] == {"cycle": "A -> B -> C", "count": 1}


# ------------------------------------------------------------------ empowerment
def test_mixture_mi_is_zero_for_identical_components_and_log_k_when_separated():
    rng = np.random.default_rng(0)
    assert gaussian_mixture_mi(np.zeros((4, 3)), np.ones(3), 200, rng) == pytest.approx(0.0, abs=1e-12)
    far = np.eye(4) * 100.0
    assert gaussian_mixture_mi(far, np.ones(4), 200, rng) == pytest.approx(math.log(4), abs=1e-6)
    mid = gaussian_mixture_mi(np.eye(4) * 1.0, np.ones(4), 2000, rng)
    assert 0.05 < mid < math.log(4)


# ------------------------------------------------------------------ fused vs reference
def test_fused_decision_equals_the_numpy_reference():
    _, data = _data(days=2)
    agent = UMCAgent(**SMALL)
    run_backtest(data, agent, NO_RISK)  # trained weights, a real state
    rng = np.random.default_rng(5)
    from umc_backtest.agent.fused import decide_nb

    g = agent.gi
    for _ in range(20):
        obs, ctx = rng.normal(size=agent.obs_dim), rng.normal(size=agent.ctx_dim)
        agent.next_prior = rng.normal(size=agent.latent)
        agent.exposure = float(rng.choice([0.0, 0.3, 1.0]))
        agent.lam = float(rng.uniform(0.1, 0.46))
        u = float(rng.random())
        ref = agent._decide_reference(obs, ctx, u)
        fused = decide_nb(agent.next_prior, obs, ctx, g.enc_w1, g.enc_b1, g.enc_w2, g.enc_b2, g.t_w1_s, g.t_w1_a,
                          g.t_b1, g.t_w2, g.t_b2, g.em_w1, g.em_b1, g.em_w2, g.em_b2, agent.exposure,
                          agent.position_size, agent.max_position, agent.drift, agent.cost_scaled, agent.pref_return,
                          agent.pref_var, agent.lam, agent.temperature, u)
        assert fused[1] == ref[1]
        for a, b in zip(fused, ref):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ through the engine
def test_changing_prices_after_t_never_changes_the_agents_actions_up_to_t():
    df, data = _data(days=3, seed=4)
    cut = data.start + 1500
    changed = df.copy()
    changed.loc[cut + 1 :, ["open", "high", "low", "close"]] *= np.exp(
        np.cumsum(np.random.default_rng(1).normal(0, 0.003, len(df) - cut - 1)))[:, None]
    changed.loc[cut + 1 :, "volume"] *= 2
    a = run_backtest(data, UMCAgent(**SMALL), NO_RISK)
    b = run_backtest(prepare_market_data(changed, "1m", warmup=data.start), UMCAgent(**SMALL), NO_RISK)
    t = cut - data.start
    np.testing.assert_array_equal(a.target[: t + 1], b.target[: t + 1])
    np.testing.assert_array_equal(a.extra["series"]["lambda"][: t + 1], b.extra["series"]["lambda"][: t + 1])
    assert not np.array_equal(a.target, b.target)  # the future did change what came after t


def test_seeded_runs_make_the_same_trades_and_seeds_differ():
    _, data = _data(days=2)
    r1 = run_backtest(data, UMCAgent(seed=3, **SMALL), NO_RISK)
    r2 = run_backtest(data, UMCAgent(seed=3, **SMALL), NO_RISK)
    r3 = run_backtest(data, UMCAgent(seed=4, **SMALL), NO_RISK)
    np.testing.assert_array_equal(r1.sim.order_units, r2.sim.order_units)
    np.testing.assert_array_equal(r1.sim.order_bar, r2.sim.order_bar)
    assert r1.sim.order_units.size > 0
    assert not np.array_equal(r1.target, r3.target)


def test_end_to_end_month_writes_the_umc_outputs(tmp_path):
    from umc_backtest.data import CandleStore
    from umc_backtest.data.synthetic import write_synthetic_year
    from umc_backtest.runner import DataRange, RunSpec, run_one

    write_synthetic_year(CandleStore(tmp_path / "s"), 2023, seed=3)
    spec = RunSpec(root=str(tmp_path / "s"), data=DataRange("synthetic", "BTC/USDT", "1m", start="2023-01-01",
                                                            end="2023-02-01", eval_start="2023-01-08"),
                   strategy="umc", params=(("ablation", "full"),), out_root=str(tmp_path / "o"))
    out = run_one(spec)
    files = sorted(p.name for p in (tmp_path / "o").rglob("*") if p.is_file())
    assert {"agent.parquet", "equity.parquet", "metrics.json", "plot.png", "trades.parquet"} <= set(files)
    m = out["metrics"]
    assert 0.1 <= m["umc_lambda_min"] <= m["umc_lambda_max"] <= 0.46
    assert m["umc_leakage"] == 0.0 and m["umc_regimes_seen"] >= 1 and m["umc_updates"] > 100
    assert m["umc_free_energy_last"] < m["umc_free_energy_first"]
    agent = pd.read_parquet(next((tmp_path / "o").rglob("agent.parquet")))
    assert len(agent) == m["bars"] and {"lambda", "regime", "info_gain", "coherence"} <= set(agent.columns)


def test_bad_agent_parameters_are_rejected():
    with pytest.raises(StrategyError, match="ablation='nope'"):
        make_strategy("umc", {"ablation": "nope"})
    with pytest.raises(StrategyError, match="heads=1 must be >= 2"):
        make_strategy("umc", {"heads": 1})
    _, data = _data(days=1, history_days=0)
    with pytest.raises(StrategyError, match="bars before the window"):
        run_backtest(data, UMCAgent(), NO_RISK)


def test_numpy_mirror_matches_the_torch_model():
    torch.manual_seed(0)
    model = MarketGI(6, 8, latent=8, hidden=32, heads=5)
    gi = NumpyGI(model)
    s = np.random.default_rng(0).normal(size=8)
    with torch.no_grad():
        ts = torch.tensor(s, dtype=torch.float32)
        nxt = model.transition(ts[None, :].repeat(3, 1), torch.arange(3)).numpy()  # (E, A, L)
        mu, lv = model.emit(torch.from_numpy(gi.next_states(s)).float())
    np.testing.assert_allclose(gi.next_states(s), nxt.transpose(1, 0, 2), rtol=1e-5, atol=1e-5)
    m2, v2 = gi.emit(gi.next_states(s))
    np.testing.assert_allclose(m2, mu.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(v2, lv.exp().numpy(), rtol=1e-4, atol=1e-5)
