"""Placement: the site catalogue, the shipped layouts, the CLI, the drawing and the optimiser."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from testenv import FIRMWARE, REPO, assert_one_line_error, micropython_binary, run_cli
from imusic.arkit import BLENDSHAPES, INDEX
from imusic.placement import (IMUSIC_ZONES, LayoutError, list_layouts, load_catalogue, load_layout,
                              placements_dir)

SHIPPED = ("imusic", "compact", "minimal")


def test_every_shipped_layout_loads_with_a_rigid_head_reference() -> None:
    assert set(SHIPPED) <= set(list_layouts())
    catalogue = load_catalogue()
    for name in list_layouts():
        layout = load_layout(name)
        assert layout.rate_hz == 60
        assert catalogue.site(layout.head_reference).rigid
        assert layout.sites == tuple(i.site for i in layout.imus)
        assert layout.face_sites == tuple(s for s in layout.sites if s != layout.head_reference)
        assert not any(catalogue.site(s).rigid for s in layout.face_sites)
        assert all(imu.reason for imu in layout.imus), name
    sizes = {name: len(load_layout(name).face_sites) for name in SHIPPED}
    assert sizes["imusic"] == 11 and 5 <= sizes["compact"] + 1 <= 6 and sizes["minimal"] + 1 == 3


def test_imusic_layout_covers_its_zones_on_one_node_with_two_buses() -> None:
    layout = load_layout("imusic")
    catalogue = load_catalogue()
    zones = [catalogue.site(s).zone for s in layout.face_sites]
    for zone in IMUSIC_ZONES:
        assert zone in zones, zone
    assert layout.node_ids == (1,)
    wiring = sorted((i.bus, i.channel) for i in layout.imus)
    assert wiring == [(b, c) for b in (0, 1) for c in range(6)]
    assert all(i.mux == 0x70 and i.chip == "qmi8658" for i in layout.imus)
    assert layout.imu(layout.head_reference).mag


def test_catalogue_is_sane() -> None:
    catalogue = load_catalogue()
    assert 30 <= len(catalogue) <= 45
    names = list(catalogue.sites)
    assert len(set(names)) == len(names)
    for site in catalogue.sites.values():
        assert abs(np.linalg.norm(site.normal) - 1.0) < 1e-9
        assert all(shape in INDEX for shape in site.observes)
        assert site.rigid == (site.zone == "head_reference"), site.name
        assert site.rigid or site.observes, site.name
        # outward normal: points away from the middle of the head (about 60 mm behind the nose)
        assert np.dot(site.normal, site.position_mm - np.array([20.0, 0.0, 0.0])) > 0, site.name
    for name, site in catalogue.sites.items():
        if name.endswith("_left"):
            twin = catalogue.site(name[: -len("_left")] + "_right")
            mirrored = site.position_mm * np.array([1, -1, 1])
            assert np.all(np.abs(mirrored - twin.position_mm) <= 1.0), name
            assert np.allclose(site.normal * np.array([1, -1, 1]), twin.normal, atol=1e-3)
            assert site.position_mm[1] > 0  # y is the subject's left
        elif not name.endswith("_right"):
            assert abs(site.position_mm[1]) <= 1.0, f"midline site {name} off the midline"
    zones = set(catalogue.zones())
    for zone in ("frontalis", "corrugator", "orbicularis_oculi", "zygomaticus", "levator_labii", "nasalis",
                 "buccinator", "risorius", "orbicularis_oris", "depressor_anguli_oris", "mentalis", "masseter",
                 "head_reference"):
        assert zone in zones, zone


def _write_layout(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


GOOD = """name: t
rate_hz: 60
head_reference: nasion
nodes:
  - node_id: 1
    imus:
      - {site: nasion, bus: 0, mux: 0x70, channel: 0, chip: qmi8658}
      - {site: SITE, bus: 0, mux: 0x70, channel: CH, chip: qmi8658}
"""


def test_a_valid_custom_layout_file_loads(tmp_path: Path) -> None:
    layout = load_layout(str(_write_layout(tmp_path, GOOD.replace("SITE", "mentalis").replace("CH", "1"))))
    assert layout.sites == ("nasion", "mentalis")
    assert layout.site("mentalis").zone == "mentalis"


@pytest.mark.parametrize("text, needles", [
    (GOOD.replace("SITE", "left_eyebrow_thing").replace("CH", "1"), ["left_eyebrow_thing", "bad.yaml"]),
    (GOOD.replace("SITE", "mentalis").replace("CH", "0"), ["mentalis", "nasion", "channel 0"]),
    (GOOD.replace("SITE", "mentalis").replace("CH", "1").replace("head_reference: nasion", "head_reference: mentalis"),
     ["mentalis", "rigid"]),
    (GOOD.replace("SITE", "mentalis").replace("CH", "1").replace("head_reference: nasion\n", ""),
     ["head_reference"]),
    ("nodes: [\n  {node_id: 1,\n imus: [}", ["bad.yaml", "not valid YAML"]),
])
def test_bad_layouts_give_one_line_errors(tmp_path: Path, text: str, needles: list[str]) -> None:
    path = _write_layout(tmp_path, text)
    with pytest.raises(LayoutError):
        load_layout(str(path))
    assert_one_line_error(run_cli("placement", "check", str(path)), *needles)


def test_unknown_layout_names_the_available_ones() -> None:
    proc = run_cli("placement", "check", "nosuchlayout")
    assert_one_line_error(proc, "nosuchlayout", *SHIPPED)
    assert_one_line_error(run_cli("placement", "show", "nosuchlayout", "--out", "x.svg"), "nosuchlayout")


def test_check_prints_every_site_with_its_wiring() -> None:
    proc = run_cli("placement", "check", "imusic")
    assert proc.returncode == 0, proc.stderr
    layout = load_layout("imusic")
    rows = {line.split()[1]: line.split() for line in proc.stdout.splitlines()[2:] if line[:2].strip().isdigit()}
    assert set(rows) == set(layout.sites)
    for imu in layout.imus:
        row = rows[imu.site]
        assert (row[2], row[3], row[5]) == (str(imu.node_id), str(imu.bus), str(imu.channel))
    listing = run_cli("placement", "list")
    assert listing.returncode == 0 and all(name in listing.stdout for name in SHIPPED)
    assert f"{len(load_catalogue())} sites" in listing.stdout


def test_emulator_entries_and_node_config_follow_the_layout() -> None:
    for name in SHIPPED:
        layout = load_layout(name)
        for node_id in layout.node_ids:
            emu = layout.emulator_imus(node_id)
            config = layout.node_config(node_id, 60, {"type": "file", "path": "stream.bin"})
            imus = [i for i in layout.imus if i.node_id == node_id]
            assert [e["site"] for e in emu] == [c["site"] for c in config["imus"]] == [i.site for i in imus]
            for e, c, imu in zip(emu, config["imus"], imus):
                assert (e["bus"], e["mux"], e["channel"], e["chip"], e["mag"]) == (
                    imu.bus, imu.mux, imu.channel, imu.chip, imu.mag)
                assert (c["bus"], c["mux"], c["channel"], c["chip"]) == (imu.bus, imu.mux, imu.channel, imu.chip)
            assert config["node_id"] == node_id and config["rate_hz"] == 60


# Runs the firmware's own config loader on the layout's node.json and prints what it understood.
FIRMWARE_CONFIG_SCRIPT = """
import sys
from imnode import config
cfg = config.load(sys.argv[1])
print("problems", len(cfg.problems))
for p in cfg.problems:
    print("problem", p[1])
print("node", cfg.node_id, cfg.rate_hz)
for s in cfg.imus:
    print("imu", s.bus, s.mux, s.channel, s.site, s.chip)
"""


def test_node_config_passes_the_firmware_config_loader(tmp_path: Path) -> None:
    micropython = micropython_binary()
    if micropython is None:
        pytest.skip("micropython (unix port) not installed: run make bootstrap")
    script = tmp_path / "check_config.py"
    script.write_text(FIRMWARE_CONFIG_SCRIPT)
    for name in SHIPPED:
        layout = load_layout(name)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(layout.node_config(1, 60, {"type": "serial"})))
        proc = subprocess.run([micropython, str(script), str(path)], capture_output=True, text=True, timeout=60,
                              env={"MICROPYPATH": str(FIRMWARE)})
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0] == "problems 0", proc.stdout
        assert lines[1] == "node 1 60"
        got = [line.split()[1:] for line in lines if line.startswith("imu ")]
        want = [[str(i.bus), str(i.mux), str(i.channel), i.site, i.chip] for i in layout.imus]
        assert got == want


def test_show_writes_an_svg_naming_every_site_and_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    svg = tmp_path / "imusic.svg"
    proc = run_cli("placement", "show", "imusic", "--out", str(svg))
    assert proc.returncode == 0, proc.stderr
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    text = " ".join(t for el in root.iter() if el.tag.endswith("text") for t in el.itertext())
    for site in load_layout("imusic").sites:
        assert site in text, site
    assert "node 1 bus 1 mux 0x70 ch 5" in text
    png = tmp_path / "minimal.png"
    proc = run_cli("placement", "show", "minimal", "--out", str(png))
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_one_line_error(run_cli("placement", "show", "minimal", "--out", str(tmp_path / "face.jpg")), ".svg")


def test_layout_files_are_found_in_the_checkout() -> None:
    assert placements_dir() in (REPO / "hardware" / "placements",
                                Path(load_catalogue().path).parent)


# ---- optimiser (needs the simulator's face model and expression generator)

@pytest.fixture(scope="module")
def face_model():
    face = pytest.importorskip("imusic.sim.face")
    return face.FaceModel()


def test_greedy_pick_beats_random_subsets_and_no_single_swap_helps(face_model) -> None:
    from imusic.placement.optimize import Problem, best_swap, greedy_select, observability

    catalogue = load_catalogue()
    face_sites = [n for n, s in catalogue.sites.items() if not s.rigid]
    k = 11
    problem = Problem([catalogue.site(n) for n in face_sites], face_model)
    pick = greedy_select(k, problem=problem)
    assert len(set(pick["sites"])) == k
    rng = np.random.default_rng(4)
    for _ in range(20):
        subset = list(rng.choice(face_sites, size=k, replace=False))
        assert pick["logdet"] >= observability(subset, model=face_model)["logdet"]
    # the information reported for the pick is the one observability computes for the same sites
    assert observability(pick["sites"], model=face_model)["logdet"] == pytest.approx(pick["logdet"])
    # greedy carries no guarantee once errors are correlated between sites: check it is a local optimum
    gain, _, _ = best_swap(pick["sites"], problem)
    assert gain <= 1e-6


def test_zone_constrained_pick_covers_the_imusic_zones(face_model) -> None:
    from imusic.placement.optimize import greedy_select

    catalogue = load_catalogue()
    plain = greedy_select(11, model=face_model)
    covered = greedy_select(11, model=face_model, cover_zones=IMUSIC_ZONES)
    zones = {catalogue.site(s).zone for s in covered["sites"]}
    assert set(IMUSIC_ZONES) <= zones and covered["missing_imusic_zones"] == []
    assert covered["logdet"] <= plain["logdet"] + 1e-9  # a constraint can only cost information


def test_excluded_sites_are_never_picked(face_model) -> None:
    from imusic.placement.optimize import greedy_select

    plain = greedy_select(6, model=face_model)
    banned = plain["sites"][:2]
    other = greedy_select(6, model=face_model, exclude=banned)
    assert not set(banned) & set(other["sites"]) and other["excluded"] == banned
    assert other["logdet"] <= plain["logdet"] + 1e-9


def test_observability_orders_the_layouts_and_rigid_sites_see_nothing(face_model) -> None:
    from imusic.placement.optimize import observability

    figures = {name: observability(load_layout(name).face_sites, model=face_model) for name in SHIPPED}
    assert figures["imusic"]["logdet"] >= figures["compact"]["logdet"] >= figures["minimal"]["logdet"] > 0
    assert figures["imusic"]["resolved"] >= figures["minimal"]["resolved"]
    rigid = [n for n, s in load_catalogue().sites.items() if s.rigid]
    assert observability(rigid, model=face_model)["logdet"] < 1e-3
    # eye gaze is (honestly) poorly observable from the skin: almost none of its variance explained
    assert figures["imusic"]["explained"]["eyeLookInLeft"] < 0.1
    assert figures["imusic"]["explained"]["mouthSmileLeft"] > 0.9


def test_flat_prior_and_sensor_noise_reduce_to_the_information_matrix(face_model) -> None:
    """With independent sensor noise and a flat prior, the mutual information equals the classic
    logdet(I + sum_i J_i^T W J_i) of the per-site information matrices."""
    from imusic.placement.optimize import NoiseModel, WeightPrior, observability

    catalogue = load_catalogue()
    names = load_layout("compact").face_sites
    noise = NoiseModel(placement_mm=0.0, skin_mm=0.0)
    sites = [catalogue.site(n) for n in names]
    jac = face_model.sensitivity(np.stack([s.position_mm for s in sites]), np.stack([s.normal for s in sites]))
    w = 1.0 / noise.sensor_variance()
    info = np.eye(52) + np.einsum("nak,a,nal->kl", jac, w, jac)
    expected = np.linalg.slogdet(info)[1]
    got = observability(names, model=face_model, noise=noise, prior=WeightPrior.flat())
    assert got["logdet"] == pytest.approx(expected, rel=1e-9)
    post_sd = np.sqrt(np.diag(np.linalg.inv(info)))
    assert [got["posterior_sd"][b] for b in BLENDSHAPES] == pytest.approx(post_sd, rel=1e-6)


def test_expression_prior_follows_the_generator(face_model) -> None:
    from imusic.placement.optimize import WeightPrior

    prior = WeightPrior.expressions(floor_sd=0.05)
    again = WeightPrior.expressions(floor_sd=0.05)
    assert np.array_equal(prior.cov, again.cov)  # deterministic
    assert np.all(np.linalg.eigvalsh(prior.cov) >= 0.05 ** 2 * (1 - 1e-9))
    sd = dict(zip(BLENDSHAPES, prior.sd()))
    assert sd["tongueOut"] == pytest.approx(0.05)  # the generator never moves it: the floor alone
    assert sd["mouthSmileLeft"] > 3 * sd["mouthRollUpper"]  # smiles move far more than lip rolls
    assert sd["jawOpen"] > sd["jawForward"]


def test_shared_skin_motion_makes_a_second_imu_on_the_same_spot_worth_less(face_model) -> None:
    from imusic.placement.optimize import NoiseModel, Problem

    site = load_catalogue().site("buccinator_left")
    second: dict[float, float] = {}
    for skin_mm in (0.0, 1.0):
        problem = Problem([site, site], face_model, NoiseModel(placement_mm=0.0, skin_mm=skin_mm))
        second[skin_mm] = problem.information([0, 1]) - problem.information([0])
    # independent sensor noise: two IMUs average it; shared skin motion does not average out
    # (the rotation channels, which the skin term leaves alone, keep most of the second look)
    assert second[0.0] > 0.5 and second[1.0] < 0.9 * second[0.0]


def test_placement_error_penalises_sites_on_steep_motion_fields(face_model) -> None:
    from imusic.placement.optimize import NoiseModel, observability

    def kept(site: str) -> float:
        """Share of the site's information that survives a 1.9 mm placement error."""
        without = observability([site], model=face_model, noise=NoiseModel(placement_mm=0.0, skin_mm=0.0))
        with_error = observability([site], model=face_model, noise=NoiseModel(skin_mm=0.0))
        return with_error["logdet"] / without["logdet"]

    # the philtrum sits on the flank of the lip shapes' small fields; the chin rides on the mandible
    assert kept("orbicularis_oris_upper") < 0.8 < kept("mentalis")
    assert kept("orbicularis_oris_upper") < kept("zygomaticus_minor_left")


def test_optimize_cli_json(face_model) -> None:
    proc = run_cli("placement", "optimize", "--k", "4", "--json", "--layout-name", "opt4")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert len(result["pick"]["sites"]) == 4 and set(SHIPPED) <= set(result["layouts"])
    assert set(result["pick"]["explained"]) == set(INDEX)
    assert result["pick"]["prior"]["name"] == "expressions"
    assert "opt4" in result["layout_yaml"]
    assert_one_line_error(run_cli("placement", "optimize", "--k", "0"), "k must be")


def test_optimize_cli_objective_options(face_model) -> None:
    from imusic.placement.optimize import NoiseModel, WeightPrior, greedy_select

    proc = run_cli("placement", "optimize", "--k", "3", "--json", "--prior", "flat", "--placement-mm", "0",
                   "--skin-mm", "0", "--exclude", "orbicularis_oris_lower")
    assert proc.returncode == 0, proc.stderr
    pick = json.loads(proc.stdout)["pick"]
    direct = greedy_select(3, model=face_model, noise=NoiseModel(placement_mm=0.0, skin_mm=0.0),
                           prior=WeightPrior.flat(), exclude=["orbicularis_oris_lower"])
    assert pick["sites"] == direct["sites"] and pick["logdet"] == pytest.approx(direct["logdet"])
    assert "orbicularis_oris_lower" not in pick["sites"]
    assert_one_line_error(run_cli("placement", "optimize", "--k", "3", "--skin-mm", "-1"), "skin_mm")
    assert_one_line_error(run_cli("placement", "optimize", "--k", "3", "--exclude", "nosuchsite"), "nosuchsite")
    assert_one_line_error(run_cli("placement", "optimize", "--k", "3", "--prior", "flat", "--prior-floor", "0.1"),
                          "--prior-floor")


def test_the_real_firmware_reports_the_layout_sites_in_frame_order(tmp_path: Path) -> None:
    if micropython_binary() is None:
        pytest.skip("micropython (unix port) not installed: run make bootstrap")
    from conftest import decode_all, run_emulated_to_file
    from imusic.protocol import Hello

    layout = load_layout("imusic")
    config = layout.node_config(1, 60, {"type": "file", "path": str(tmp_path / "stream.bin")})
    data, stderr = run_emulated_to_file(tmp_path, imus=layout.emulator_imus(1), rate_hz=60, clock="virtual",
                                        max_seconds=0.5, node_config=config)
    assert "Traceback" not in stderr
    hello = next(m for m in decode_all(data)[0] if isinstance(m, Hello))
    assert [i.site for i in hello.imus] == list(layout.sites)
    assert [(i.bus, i.mux_channel) for i in hello.imus] == [(i.bus, i.channel) for i in layout.imus]
    assert hello.rate_hz == 60


def test_the_docs_catalogue_table_is_the_generated_one() -> None:
    proc = run_cli("placement", "list", "--markdown")
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.strip()
    assert table.count("\n") + 1 == 2 + len([n for n in load_catalogue().sites if not n.endswith("_right")])
    assert table in (REPO / "docs" / "placement.md").read_text(), "docs/placement.md: rerun `imusic placement list --markdown`"
