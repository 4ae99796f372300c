"""`trsllava search` over a run built by the workflow: text-to-image, image-to-text, JSON, errors, and
the HTML gallery rendered in a real headless browser (Chromium)."""

import html.parser
import json
import re
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest
import yaml
from test_workflow import snakemake, write_config

from trsllava.cli import main
from trsllava.errors import TrsllavaError
from trsllava.search import image_search, open_archive, text_search
from trsllava.search.query import _exact, caption_rows

# Written explicitly (the default config.yaml may name captioners that need downloads).
SAMPLE_RUN = {
    "datasets": {"sample": {"format": "builtin"}},
    "captioners": {
        "claude-sample": {
            "backend": "import",
            "model": "claude (Anthropic); written by viewing anonymised images, see the sample README",
            "files": {"sample": "builtin"},
        }
    },
    "encoders": {"minilm": {"type": "sentence-transformers", "model": "minilm"}, "bm25": {"type": "bm25"}},
    "aggregations": ["max"],
}
# query -> the scene class whose two sample images must come first
QUERIES = {
    "many airplanes parked at an airport": "airport",
    "a baseball field with a diamond": "baseballfield",
    "round white oil storage tanks": "storagetanks",
    "a bridge over a river": "bridge",
    "sandy beach next to the sea waves": "beach",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The sample run up to its indexes (what search needs), built once through Snakemake."""
    workdir = write_config(tmp_path_factory.mktemp("search"), **SAMPLE_RUN)
    results = workdir / "results" / "sample"
    snakemake(workdir, "--cores", "2", *(str(results / "index" / e / "claude-sample") for e in ("minilm", "bm25")))
    return workdir


def archive(workdir, encoder="minilm", **changes):
    config = {**yaml.safe_load((workdir / "config.yaml").read_text()), **changes}
    return open_archive(config, "config.yaml", None, None, None, encoder)


def run_cli(capsys, workdir, *args):
    code = main(["search", "--config", str(workdir / "config.yaml"), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("encoder", ["minilm", "bm25"])
@pytest.mark.parametrize("query", sorted(QUERIES))
def test_text_query_finds_its_scene_class(built, encoder, query):
    found = text_search(archive(built, encoder), query, k=5)
    ids = [hit.image_id for hit in found.hits]
    gallery = pl.read_parquet(built / "results" / "sample" / "dataset" / "images.parquet")["image_id"].to_list()
    assert set(ids[:2]) == {i for i in gallery if i.rsplit("_", 1)[0] == QUERIES[query]}, ids  # both images of the class
    scores = [hit.score for hit in found.hits]
    assert scores == sorted(scores, reverse=True) and len(set(ids)) == len(ids) == 5
    captions = pl.read_parquet(built / "results" / "sample" / "captions" / "claude-sample.parquet")
    for hit in found.hits:  # the matched caption is one of that image's own texts, from the right field
        own = captions.filter((pl.col("image_id") == hit.image_id) & (pl.col("text") == hit.text))
        assert own.height >= 1 and (hit.prompt, hit.field) in own.select("prompt", "field").rows()
        assert Path(hit.path).is_file() and Path(hit.path).name == hit.image_id


def test_faiss_search_equals_exact_scoring_of_every_caption(built):
    """The FAISS path (dense, max) ranks exactly as scoring every text of the caption set does."""
    arc = archive(built)
    query = "a baseball field with a diamond"
    found = text_search(arc, query, k=60)  # every image: forces the widening FAISS search to the end
    _, rows = caption_rows(arc, None)
    texts = arc.captions_rep.texts
    rows = rows.with_columns(pl.col("text").replace_strict({t: i for i, t in enumerate(texts)}).alias("text_row"))
    encoder = arc.encoder
    scores = encoder.encode(encoder.load_model(), [query], progress=False)[0] @ arc.captions_rep.vectors.T
    exact = _exact(scores, rows, "max", 60)
    assert [h.image_id for h in found.hits] == [r["image_id"] for r in exact]
    assert [h.score for h in found.hits] == pytest.approx([r["score"] for r in exact], abs=1e-5)
    assert [h.text for h in found.hits] == [r["text"] for r in exact]


def test_mean_aggregation_and_caption_set(built):
    arc = archive(built)
    best = {h.image_id: h.score for h in text_search(arc, "a bridge over a river", k=60).hits}
    mean = text_search(arc, "a bridge over a river", k=60, aggregation="mean")
    assert [h.score for h in mean.hits] == sorted((h.score for h in mean.hits), reverse=True)
    assert all(h.score <= best[h.image_id] + 1e-6 for h in mean.hits)  # a mean never beats the max
    one = text_search(arc, "a bridge over a river", k=3, caption_set="rsrt/one_sentence")
    assert one.caption_set == "rsrt/one_sentence" and {(h.prompt, h.field) for h in one.hits} == {("rsrt", "one_sentence")}
    with pytest.raises(TrsllavaError, match="caption set 'nope' not in .*available"):
        text_search(arc, "x", caption_set="nope")


def test_cli_table_and_json(built, capsys):
    code, out, _ = run_cli(capsys, built, "many airplanes parked at an airport", "-k", "4", "--encoder", "minilm")
    assert code == 0
    assert 'query: "many airplanes parked at an airport"' in out and "airport_4.jpg" in out and "matched caption" in out
    code, out, _ = run_cli(capsys, built, "many airplanes parked at an airport", "-k", "4", "--encoder", "bm25", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["mode"] == "text" and result["encoder"] == "bm25" and result["target"] == "images"
    assert len(result["hits"]) == 4 and {h["image_id"] for h in result["hits"][:2]} == {"airport_4.jpg", "airport_5.jpg"}
    assert set(result["hits"][0]) >= {"rank", "score", "image_id", "text", "prompt", "field", "path"}


def test_image_to_text_both_directions(built, capsys):
    arc = archive(built)
    references = pl.read_parquet(built / "results" / "sample" / "dataset" / "references.parquet")
    human = image_search(arc, "airport_5.jpg", k=5, captions="human")
    assert human.target == "human captions" and len(human.hits) == 5
    generated_of_image = pl.read_parquet(built / "results" / "sample" / "captions" / "claude-sample.parquet").filter(
        pl.col("image_id") == "airport_5.jpg")
    assert sorted(human.query_texts) == sorted(generated_of_image["text"].to_list())  # the image's own generated texts
    for hit in human.hits:
        holders = set(references.filter(pl.col("text") == hit.text)["image_id"].to_list())
        assert set(hit.image_ids) == holders and hit.same_image == ("airport_5.jpg" in holders)
        assert hit.prompt is None and hit.matched_query in human.query_texts
        assert hit.image_ids[0].startswith("airport_")  # RSICD's airport captions come first
    assert any(hit.same_image for hit in human.hits)
    assert [h.score for h in human.hits] == sorted((h.score for h in human.hits), reverse=True)
    # a file path maps to its gallery id by file name; generated captions ranked by the human ones
    code, out, _ = run_cli(capsys, built, "--image", "/elsewhere/airport_5.jpg", "--captions", "generated", "--caption-set",
                           "rsicd_style", "-k", "3", "--encoder", "minilm", "--json")
    result = json.loads(out)
    assert code == 0 and result["query"] == "airport_5.jpg" and result["target"] == "generated captions"
    assert sorted(result["query_texts"]) == sorted(references.filter(pl.col("image_id") == "airport_5.jpg")["text"].to_list())
    assert {h["prompt"] for h in result["hits"]} == {"rsicd_style"} and any(h["same_image"] for h in result["hits"])


def test_clear_errors(built, capsys, tmp_path):
    code, _, err = run_cli(capsys, built, "a query", "--dataset", "rsicd")
    assert code == 1 and "dataset 'rsicd' is not defined under datasets" in err and "['sample']" in err
    code, _, err = run_cli(capsys, built, "a query", "--results", str(tmp_path / "empty"), "--encoder", "minilm")
    assert code == 1 and "no results for dataset 'sample'" in err and "snakemake --cores 2" in err
    code, _, err = run_cli(capsys, built, "--image", "not_in_sample.jpg", "--encoder", "bm25")
    assert code == 1 and "neither an image id of dataset 'sample'" in err
    code, _, err = run_cli(capsys, built, "a query", "--image", "airport_5.jpg")
    assert code == 1 and "not both" in err
    # an encoder configured but never built: the missing file and the target that builds it are named
    config = yaml.safe_load((built / "config.yaml").read_text())
    config["encoders"]["bm25-tuned"] = {"type": "bm25", "k1": 1.2}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    code = main(["search", "a query", "--config", str(tmp_path / "config.yaml"), "--encoder", "bm25-tuned"])
    err = capsys.readouterr().err
    index = built / "results" / "sample" / "index" / "bm25-tuned" / "claude-sample"
    assert code == 1 and "not found" in err and f"snakemake --cores 2 {index}" in err
    # the config's encoder differs from the one that built the cache
    with pytest.raises(TrsllavaError, match="was built with 'minilm'"):
        text_search(archive(built, encoders={"minilm": {"type": "sentence-transformers", "model": "mpnet"}}), "x")


# -- the HTML gallery in a real browser -----------------------------------------------------------

class _Checker(html.parser.HTMLParser):
    """Tag balance (void elements aside) and every resource reference."""

    VOID = frozenset({"meta", "img", "br", "hr", "link", "input"})

    def __init__(self):
        super().__init__()
        self.stack, self.sources, self.errors = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.sources += [attrs[k] for k in ("src", "href") if k in attrs]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def chromium_dom(page: Path, profile: Path) -> str:
    browser = shutil.which("chromium")
    if browser is None:
        pytest.fail("chromium is not installed: the gallery test needs a real browser; `make test` installs it when run "
                    "as root, or: sudo apt-get install -y chromium")
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0 and "<body" in result.stdout, result.stderr[-2000:]
    return result.stdout


def test_gallery_page_renders_in_a_headless_browser(built, capsys, tmp_path):
    page = tmp_path / "gallery.html"
    code, out, _ = run_cli(capsys, built, "a baseball field with a diamond", "-k", "5", "--encoder", "minilm", "--json",
                           "--html", str(page))
    assert code == 0
    hits = json.loads(out)["hits"]
    source = page.read_text()
    checker = _Checker()
    checker.feed(source)
    assert source.startswith("<!DOCTYPE html>") and not checker.errors and not checker.stack
    assert checker.sources and all(s.startswith("data:image/jpeg;base64,") for s in checker.sources)  # nothing external
    assert "a baseball field with a diamond" in source

    dom = chromium_dom(page, tmp_path / "profile")
    # the inline script ran after load and found every thumbnail decoded (naturalWidth > 0)
    assert re.search(r'<body[^>]*data-images-decoded="5/5"', dom), re.findall(r"<body[^>]*>", dom)
    for hit in hits:
        figure = re.search(rf'<figure class="hit" data-image-id="{re.escape(hit["image_id"])}"[^>]*>(.*?)</figure>', dom, re.DOTALL)
        assert figure, hit["image_id"]
        assert 'data-decoded="true"' in figure.group(1)
        assert f"<mark>{hit['text']}</mark>".replace("&", "&amp;") in figure.group(1)
    assert {h["image_id"] for h in hits[:2]} == {"baseballfield_5.jpg", "baseballfield_6.jpg"}

    # control: the same check sees a thumbnail that does not decode
    broken = tmp_path / "broken.html"
    broken.write_text(source.replace("data:image/jpeg;base64,", "data:image/jpeg;base64,AAAA", 1))
    assert 'data-images-decoded="4/5"' in chromium_dom(broken, tmp_path / "profile2")


def test_gallery_of_image_to_text(built, capsys, tmp_path):
    page = tmp_path / "captions.html"
    code, _, _ = run_cli(capsys, built, "--image", "stadium_5.jpg", "-k", "3", "--encoder", "bm25", "--html", str(page))
    assert code == 0
    dom = chromium_dom(page, tmp_path / "profile")
    assert 'data-images-decoded="4/4"' in dom  # the query image and three results
    assert 'class="query-image" data-image-id="stadium_5.jpg"' in dom and dom.count("<mark>") == 3


# -- a user's own image folder ---------------------------------------------------------------------

def test_search_a_generic_image_folder(tmp_path, capsys):
    """A user's folder of images with a CSV of captions and an imported caption set, built and searched."""
    sample = Path(__file__).resolve().parents[1] / "src" / "trsllava" / "data" / "sample" / "images"
    folder = tmp_path / "my_images"
    folder.mkdir()
    for name in ("airport_4.jpg", "beach_4.jpg", "forest_6.jpg"):
        shutil.copy(sample / name, folder / name.replace("_", "-"))
    (tmp_path / "refs.csv").write_text("filename,caption\nairport-4.jpg,planes at an airport\n"
                                       "beach-4.jpg,a beach and the sea\nforest-6.jpg,a dense green forest\n")
    (tmp_path / "caps.jsonl").write_text("\n".join(json.dumps({"filename": f, "text": t}) for f, t in [
        ("airport-4.jpg", "white airplanes parked beside a terminal"), ("beach-4.jpg", "waves on a sandy beach"),
        ("forest-6.jpg", "dense trees covering hills")]) + "\n")
    workdir = write_config(tmp_path / "run", datasets={"mine": {"format": "generic", "annotations": str(tmp_path / "refs.csv"),
                                                                "images": str(folder)}},
                           captioners={"mine-caps": {"backend": "import", "files": {"mine": str(tmp_path / "caps.jsonl")}}},
                           encoders={"bm25": {"type": "bm25"}}, fusions={}, aggregations=["max"])
    snakemake(workdir, "--cores", "2", str(workdir / "results" / "mine" / "index" / "bm25" / "mine-caps"))
    page = tmp_path / "mine.html"
    code, out, _ = run_cli(capsys, workdir, "airplanes at the terminal", "-k", "2", "--json", "--html", str(page))
    result = json.loads(out)
    assert code == 0 and result["dataset"] == "mine" and result["hits"][0]["image_id"] == "airport-4.jpg"
    assert result["hits"][0]["path"] == str(folder / "airport-4.jpg")
    assert 'data-images-decoded="2/2"' in chromium_dom(page, tmp_path / "profile")
