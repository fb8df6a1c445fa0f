"""The quant example workload (jobs/quant, jobs/dags/quant_backtest.yaml), run as plain functions: no Ray."""

from __future__ import annotations

import importlib
import inspect
import json
import math
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fabric.context import local_context
from jobs.quant.backtest import run_backtest
from jobs.quant.data import business_days, generate_market_data, simulate_market
from jobs.quant.features import LABEL, build_features, model_feature_names, raw_feature_names
from jobs.quant.model import fit_model, predict
from jobs.quant.pipeline import load_dag, node_params, run_locally, run_sql
from jobs.quant.report import make_report, summarize

QUERY = node_params(load_dag())["clean_prices"]["query"]
METRIC_NAMES = {"days", "ann_return", "ann_vol", "sharpe", "total_return", "max_drawdown", "hit_rate",
                "avg_turnover", "ann_cost", "gross_sharpe", "oos_ic", "in_sample_ic", "in_sample_ic_ir",
                "in_sample_r2", "split_date"}


@pytest.fixture(scope="module")
def raw() -> pa.Table:
    return simulate_market()


@pytest.fixture(scope="module")
def features(raw: pa.Table) -> pa.Table:
    return build_features(raw)


@pytest.fixture(scope="module")
def fitted(features: pa.Table) -> dict:
    return fit_model(features)


@pytest.fixture(scope="module")
def pnl(features: pa.Table, fitted: dict) -> pa.Table:
    return run_backtest(features, fitted["model"])


def _sql(query: str, **tables: object) -> pl.DataFrame:
    """Polars SQLContext used directly, the way the `sql` kind registers its inputs."""
    frames = {k: pl.scan_parquet(v) if isinstance(v, str) else pl.from_arrow(v).lazy()  # type: ignore[union-attr]
              for k, v in tables.items()}
    return pl.SQLContext(frames).execute(query, eager=True)


# ---- data -------------------------------------------------------------------------------------------


def test_generate_market_data_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    tables = []
    for name, seed in [("a", 7), ("b", 7), ("c", 8)]:
        with local_context(tmp_path / name) as ctx:
            tables.append(generate_market_data(n_assets=12, n_days=150, seed=seed))
            assert ctx.last_progress is not None and ctx.last_progress[0] == 1.0
        # the table is the output (it travels through Ray to any worker); the parquet is a node file
        assert isinstance(tables[-1], pa.Table)
        assert pq.read_table(tmp_path / name / "prices.parquet").equals(tables[-1])
    a, b, c = tables
    assert a.equals(b)
    assert not a.column("close").equals(c.column("close"))
    assert a.equals(simulate_market(n_assets=12, n_days=150, seed=7))


def test_generated_panel_is_complete_and_sane(raw: pa.Table) -> None:
    df = pl.from_arrow(raw)
    assert df.columns == ["date", "asset", "close", "volume", "earnings_yield", "book_to_price"]
    assert df.height == 50 * 750
    assert df.select(pl.struct("date", "asset").n_unique()).item() == df.height
    assert df["date"].dt.weekday().max() <= 5
    assert df["close"].min() > 0 and df["volume"].min() > 0
    assert df.null_count().sum_horizontal().item() == 0


# ---- the SQL node -----------------------------------------------------------------------------------


def test_sql_query_runs_in_polars_sqlcontext_on_the_parquet(tmp_path: Path, raw: pa.Table) -> None:
    path = str(tmp_path / "prices.parquet")
    pq.write_table(raw, path)
    out = _sql(QUERY, raw_prices=path)
    assert out.columns == ["date", "asset", "close", "volume", "earnings_yield", "book_to_price",
                           "dollar_volume", "ret_1d"]
    assert out.height == raw.num_rows
    assert out["date"].dtype == pl.Date and out["close"].dtype == pl.Float64
    assert out.equals(out.sort("asset", "date"))
    expected = pl.from_arrow(raw).sort("asset", "date").select(
        (pl.col("close") / pl.col("close").shift(1) - 1).over("asset").alias("ret_1d"))
    np.testing.assert_allclose(out["ret_1d"].fill_null(np.nan).to_numpy(),
                               expected["ret_1d"].fill_null(np.nan).to_numpy(), rtol=1e-12)
    assert out["ret_1d"].null_count() == 50
    assert run_sql(QUERY, raw_prices=path).equals(out.to_arrow())


def test_sql_orders_the_window_by_date_and_drops_bad_rows(raw: pa.Table) -> None:
    df = pl.from_arrow(raw).filter(pl.col("asset").is_in(["SYN000", "SYN001"])).head(200)
    bad = df.head(2).with_columns(pl.Series("close", [-1.0, 5.0]), pl.Series("volume", [10, 0]),
                                  pl.lit(date(2030, 1, 1)).alias("date"))
    shuffled = pl.concat([df, bad]).sample(fraction=1.0, shuffle=True, seed=3)
    out = _sql(QUERY, raw_prices=shuffled.to_arrow())
    clean = _sql(QUERY, raw_prices=df.to_arrow())
    assert out.height == df.height
    assert out["date"].max() < date(2030, 1, 1)
    assert out.equals(clean)


# ---- features ---------------------------------------------------------------------------------------


def test_features_have_no_look_ahead(raw: pa.Table, features: pa.Table) -> None:
    df = pl.from_arrow(raw)
    cut = df["date"].unique().sort()[400]
    future = pl.col("date") > cut
    rng = np.random.default_rng(0)
    shock = pl.Series(rng.uniform(0.5, 2.0, df.height))
    perturbed = df.with_columns(
        pl.when(future).then(pl.col("close") * shock).otherwise(pl.col("close")).alias("close"),
        pl.when(future).then(pl.col("volume") * 3).otherwise(pl.col("volume")).alias("volume"),
        pl.when(future).then(-pl.col("earnings_yield")).otherwise(pl.col("earnings_yield"))
        .alias("earnings_yield"),
    )
    before = pl.from_arrow(features)
    after = pl.from_arrow(build_features(perturbed.to_arrow()))
    cols = [c for c in before.columns if c != LABEL]
    past_before, past_after = before.filter(pl.col("date") <= cut), after.filter(pl.col("date") <= cut)
    assert past_before.height == 50 * 341
    assert past_after.select(cols).equals(past_before.select(cols))
    # the label is the forward return: unchanged before the cut, changed on the cut date itself
    before_cut, on_cut = pl.col("date") < cut, pl.col("date") == cut
    assert past_after.filter(before_cut)[LABEL].equals(past_before.filter(before_cut)[LABEL])
    assert not past_after.filter(on_cut)[LABEL].equals(past_before.filter(on_cut)[LABEL])
    # and the perturbation did reach the features after the cut
    assert not after.filter(future).select(cols).equals(before.filter(future).select(cols))


def test_label_is_the_forward_one_day_return(raw: pa.Table, features: pa.Table) -> None:
    px = pl.from_arrow(raw).filter(pl.col("asset") == "SYN003").sort("date")["close"].to_numpy()
    f = pl.from_arrow(features).filter(pl.col("asset") == "SYN003").sort("date")
    assert f.height == 750 - 60 and f["date"].min() > pl.from_arrow(raw)["date"].min()
    expected = px[61:] / px[60:-1] - 1
    np.testing.assert_allclose(f[LABEL].to_numpy()[:-1], expected, rtol=1e-12)
    assert f[LABEL][-1] is None
    np.testing.assert_allclose(f["mom_20"].to_numpy(), px[60:] / px[40:-20] - 1, rtol=1e-12)


def test_features_are_cross_sectionally_normalised_and_input_agnostic(raw: pa.Table,
                                                                        features: pa.Table) -> None:
    f = pl.from_arrow(features)
    names = raw_feature_names()
    assert model_feature_names(f.columns) == [f"z_{n}" for n in names]
    z, rank = pl.col("z_mom_20"), pl.col("rank_mom_20")
    per_date = f.group_by("date").agg(z.mean().alias("m"), z.std().alias("s"),
                                      rank.min().alias("lo"), rank.max().alias("hi"))
    assert per_date["m"].abs().max() < 0.15
    assert per_date["s"].min() > 0.8 and per_date["s"].max() < 1.05
    assert per_date["lo"].max() == 0.0 and per_date["hi"].min() == pytest.approx(1.0)
    assert build_features(pl.from_arrow(raw)).equals(features)
    via_sql = build_features(run_sql(QUERY, raw_prices=raw), lookbacks=[5, 20, 60])
    assert via_sql.equals(features)


# ---- model and backtest -----------------------------------------------------------------------------


def test_model_finds_the_planted_signal(fitted: dict, pnl: pa.Table) -> None:
    model, fit_metrics = fitted["model"], fitted["fit_metrics"]
    coef = dict(zip(model["features"], model["coef"], strict=True))
    assert max(coef, key=lambda k: abs(coef[k])) == "z_earnings_yield"
    assert coef["z_earnings_yield"] > 0.0005
    assert fit_metrics["in_sample_ic"] > 0.025
    assert 0 < fit_metrics["in_sample_r2"] < 0.05
    stats = summarize(pnl)
    assert stats["oos_ic"] > 0.025
    assert stats["sharpe"] > 1.5
    json.dumps(fitted)  # plain, serialisable dicts


def test_without_the_planted_signal_there_is_no_edge() -> None:
    feats = build_features(simulate_market(signal_strength=0.0))
    stats = summarize(run_backtest(feats, fit_model(feats)["model"]))
    assert stats["oos_ic"] < 0.015
    assert stats["sharpe"] < 1.0


def test_model_never_sees_out_of_sample_rows(features: pa.Table, fitted: dict) -> None:
    f = pl.from_arrow(features)
    split = date.fromisoformat(fitted["model"]["split_date"])
    assert f.filter(pl.col("date") < split)["date"].n_unique() == fitted["fit_metrics"]["n_train_days"]
    scrambled = f.with_columns(pl.when(pl.col("date") >= split).then(-pl.col(LABEL) * 7)
                               .otherwise(pl.col(LABEL)).alias(LABEL))
    assert fit_model(scrambled.to_arrow()) == fitted


def test_backtest_book_costs_and_pnl_match_a_naive_loop(features: pa.Table, fitted: dict,
                                                          pnl: pa.Table) -> None:
    model = fitted["model"]
    p = pl.from_arrow(pnl)
    split = date.fromisoformat(model["split_date"])
    assert p["date"].min() == split and p.height == pl.from_arrow(features).filter(
        pl.col("date") >= split).drop_nulls(LABEL)["date"].n_unique()
    assert (p["n_long"] == 10).all() and (p["n_short"] == 10).all()
    assert p["turnover"][0] == pytest.approx(2.0)
    np.testing.assert_allclose(p["cost"].to_numpy(), p["turnover"].to_numpy() * 5e-4)
    np.testing.assert_allclose(p["net_ret"].to_numpy(), (p["gross_ret"] - p["cost"]).to_numpy())

    oos = pl.from_arrow(features).filter(pl.col("date") >= split).drop_nulls(LABEL).sort("date", "asset")
    oos = oos.with_columns(pl.Series("score", predict(oos, model)))
    prev: dict[str, float] = {}
    for i, (_, day) in enumerate(oos.group_by("date", maintain_order=True)):
        if i >= 5:
            break
        order = np.argsort(day["score"].to_numpy(), kind="stable")
        assets = day["asset"].to_list()
        w = {a: 0.0 for a in assets}
        for j in order[:10]:
            w[assets[j]] = -0.1
        for j in order[-10:]:
            w[assets[j]] = 0.1
        gross = sum(w[a] * r for a, r in zip(assets, day[LABEL].to_list(), strict=True))
        turnover = sum(abs(w.get(a, 0.0) - prev.get(a, 0.0)) for a in set(w) | set(prev))
        assert p["gross_ret"][i] == pytest.approx(gross, abs=1e-12)
        assert p["turnover"][i] == pytest.approx(turnover, abs=1e-12)
        prev = w

    pricier = pl.from_arrow(run_backtest(features, model, cost_bps=25.0))
    extra_cost = (p["net_ret"] - pricier["net_ret"]).to_numpy()
    np.testing.assert_allclose(extra_cost, p["turnover"].to_numpy() * 2e-3, atol=1e-15)


# ---- report -----------------------------------------------------------------------------------------


def test_summarize_on_a_known_series() -> None:
    d0 = date(2024, 1, 1)
    table = pa.table({"date": [d0 + timedelta(days=i) for i in range(3)], "net_ret": [0.1, -0.5, 0.2],
                      "gross_ret": [0.1, -0.5, 0.2], "turnover": [2.0, 0.0, 1.0], "cost": [0.0, 0.0, 0.0],
                      "ic": [0.1, None, 0.3]})
    s = summarize(table)
    assert s["max_drawdown"] == pytest.approx(-0.5)
    assert s["total_return"] == pytest.approx(1.1 * 0.5 * 1.2 - 1)
    assert s["hit_rate"] == pytest.approx(2 / 3)
    assert s["avg_turnover"] == pytest.approx(1.0)
    assert s["oos_ic"] == pytest.approx(0.2)
    assert s["ann_return"] == pytest.approx(np.mean([0.1, -0.5, 0.2]) * 252)
    assert s["sharpe"] == pytest.approx(np.mean([0.1, -0.5, 0.2]) / np.std([0.1, -0.5, 0.2], ddof=1)
                                        * math.sqrt(252))


def test_report_values_are_sane_and_written(tmp_path: Path, pnl: pa.Table, fitted: dict) -> None:
    with local_context(tmp_path) as ctx:
        metrics = make_report(pnl, fitted["fit_metrics"])
        assert ctx.last_progress is not None and ctx.last_progress[0] == 1.0
    assert set(metrics) == METRIC_NAMES
    assert -1.0 <= metrics["max_drawdown"] < 0.0
    assert 0.0 <= metrics["hit_rate"] <= 1.0 and metrics["ann_vol"] > 0 and metrics["avg_turnover"] > 0
    assert metrics["days"] == pnl.num_rows
    assert metrics["split_date"] == fitted["model"]["split_date"]
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics


# ---- the DAG and the whole pipeline -----------------------------------------------------------------


def test_dag_yaml_is_wired_and_its_entrypoints_accept_their_inputs() -> None:
    dag = load_dag()
    assert dag["version"] == 1 and dag["pipeline_id"] == "quant_backtest_v1"
    assert dag["resources"] == {"default": {"cpu": "500m"}}
    assert dag["slo"]["retry"] == {"max_attempts": 2, "backoff_sec": 1}
    nodes = {n["id"]: n for n in dag["nodes"]}
    assert list(nodes) == ["make_data", "clean_prices", "features", "fit", "backtest", "report"]
    edges = {(e["from"], e["to"]) for e in dag["edges"]}
    assert all(a in nodes and b in nodes for a, b in edges)
    parents = {n: {a for a, b in edges if b == n} for n in nodes}

    def ancestors(n: str) -> set[str]:
        out: set[str] = set()
        for p in parents[n]:
            out |= {p} | ancestors(p)
        return out

    producers = {}
    for nid, node in nodes.items():
        for out in node.get("outs", []):
            assert out not in producers, f"{out} produced twice"
            producers[out] = nid
    needed = set()
    for nid, node in nodes.items():
        assert nid not in ancestors(nid)
        for name in node.get("ins", []):
            assert producers[name] in ancestors(nid), f"{nid}.{name}"
            needed.add((producers[name], nid))
        if node["kind"] == "sql":
            assert node["ins"] == ["raw_prices"] and "FROM raw_prices" in node["params"]["query"]
            continue
        assert node["kind"] == "python_task"
        module, func = node["entrypoint"].split(":")
        fn = getattr(importlib.import_module(module), func)
        inspect.signature(fn).bind(**(node.get("params") or {}), **{i: None for i in node.get("ins", [])})
    assert edges == needed


def test_run_locally_end_to_end(tmp_path: Path, fitted: dict, pnl: pa.Table) -> None:
    metrics = run_locally(tmp_path / "one")
    assert set(metrics) == METRIC_NAMES
    assert (tmp_path / "one" / "make_data" / "prices.parquet").is_file()
    assert json.loads((tmp_path / "one" / "report" / "metrics.json").read_text()) == metrics
    # the same numbers as the module-level calls on the default data, and again on a second run
    assert metrics["sharpe"] == pytest.approx(summarize(pnl)["sharpe"], rel=1e-9)
    assert metrics["in_sample_ic"] == pytest.approx(fitted["fit_metrics"]["in_sample_ic"], rel=1e-9)
    assert run_locally(tmp_path / "two") == metrics
    small = run_locally(tmp_path / "small", overrides={"make_data": {"n_assets": 20, "n_days": 300}})
    assert small != metrics and small["days"] < metrics["days"]



def test_the_run_params_as_of_and_n_assets_shape_the_panel(tmp_path: Path) -> None:
    """`as_of` ends the simulated panel on the run's date and `n_assets` sizes the universe, as a backfill or a
    schedule sets them; the defaults reproduce the panel of the reference run exactly."""
    import pyarrow.parquet as pq

    assert list(business_days(750, end="2021-11-16")) == list(business_days(750))  # the defaults: same data
    metrics = run_locally(tmp_path / "dated", overrides={"make_data": {"n_days": 300}},
                          run_params={"as_of": "2024-06-28", "n_assets": 20})
    panel = pq.read_table(tmp_path / "dated" / "make_data" / "prices.parquet")
    assert str(max(panel.column("date").to_pylist()))[:10] == "2024-06-28"
    assert len(set(panel.column("asset").to_pylist())) == 20 and metrics["days"] > 0
    with pytest.raises(ValueError, match="runtime_params.params.as_of"):
        node_params(load_dag(), {"as_of": "not a date"})


def test_the_backtest_writes_its_equity_curve_as_a_chart_file(tmp_path: Path, features: pa.Table,
                                                                fitted: dict, pnl: pa.Table) -> None:
    """In a node, the backtest writes equity.chart.json, which the run page draws: one point per PnL day."""
    with local_context(tmp_path / "backtest"):
        daily = run_backtest(features, fitted["model"])
    assert daily.equals(pnl)
    chart = json.loads((tmp_path / "backtest" / "equity.chart.json").read_text())
    frame = pl.from_arrow(pnl)
    assert chart["x"] == [d.isoformat() for d in frame["date"].to_list()] and len(chart["x"]) == pnl.num_rows
    net, gross = chart["series"]
    assert net["name"] == "net of costs" and gross["name"] == "gross"
    assert len(net["y"]) == len(gross["y"]) == pnl.num_rows
    assert chart["pnl"] == pytest.approx(frame["net_ret"].to_list())
    assert net["y"] == pytest.approx(np.cumprod(1.0 + frame["net_ret"].to_numpy()).tolist())
    assert gross["y"] == pytest.approx(np.cumprod(1.0 + frame["gross_ret"].to_numpy()).tolist())
    # The curve ends where the report's total return says; costs only lower it.
    assert net["y"][-1] - 1.0 == pytest.approx(summarize(pnl)["total_return"])
    assert all(n <= g + 1e-12 for n, g in zip(net["y"], gross["y"], strict=True))
    # A plain call outside a node writes nothing.
    assert not list(Path.cwd().glob("equity.chart.json"))
