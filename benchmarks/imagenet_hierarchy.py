"""Rebuild ``dedup/data/imagenet_hierarchy.json``: the WordNet hypernym
hierarchy above the 1,000 ImageNet classes, which ``--similarity semantic``
uses to relate the classes an image may show.

Source: WordNet 3.0 (Princeton University; Debian's ``wordnet-base``
package: ``apt-get install wordnet-base``) read by NLTK's
``WordNetCorpusReader`` (``pip install nltk``) from a local copy of its
files (no download). Only this script needs them; dedup reads the JSON. The
class list is ImageNet-1k's (ILSVRC 2012) WordNet noun IDs in sorted order,
the order of EfficientNet-Lite0's classifier outputs; it is read from the
shipped file itself (it came from ``timm/data/_info/imagenet_synsets.txt``,
Apache-2.0), so a rebuild only refreshes the hierarchy and the weights.

For each class: every synset on any hypernym path from it to
``entity.n.01`` (itself included). For each such node: how many of the 1,000
classes lie under it, and its intrinsic information content
``IC = ln(1000 / leaves)`` (Resnik, IJCAI 1995, with the corpus-free
estimate of Seco et al., ECAI 2004: the share of classes under a node instead
of word frequencies). ``entity`` gets 0; a class with no other class under it
gets ``ln 1000``.

    python benchmarks/imagenet_hierarchy.py [--wordnet /usr/share/wordnet]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import warnings
from pathlib import Path

from _common import ROOT

OUT = ROOT / "dedup" / "data" / "imagenet_hierarchy.json"

#: WordNet 3.0's lexicographer files, in the order of their numbers
#: (``lexnames(5WN)``); NLTK's reader wants this file, which Debian's
#: ``wordnet-base`` does not ship.
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_POS_NUMBER = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}


def wordnet_reader(source: Path):
    """NLTK's reader over a private copy of the WordNet files in ``source``.

    NLTK refuses files outside its data path (and symbolic links out of it),
    and maps a database it does not know to its downloadable one; the copy
    sits in a folder added to ``nltk.data.path`` and the mapping is switched
    off (this *is* WordNet 3.0).
    """
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class Reader(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            return None

    folder = Path(tempfile.mkdtemp(prefix="wordnet-"))
    for pattern in ("data.*", "index.*", "*.exc"):
        for f in source.glob(pattern):
            shutil.copy(f, folder / f.name)
    with open(folder / "lexnames", "w") as fh:
        for i, name in enumerate(LEXNAMES):
            fh.write(f"{i:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}\n")
    nltk.data.path.append(str(folder))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Reader(str(folder), None)


def build(source: Path) -> dict:
    wn = wordnet_reader(source)
    classes = json.loads(OUT.read_text())["classes"]
    synsets = [wn.synset_from_pos_and_offset("n", int(c["wnid"][1:])) for c in classes]
    index: dict[str, int] = {}
    ancestors = []
    for s in synsets:
        nodes = sorted({a.name() for path in s.hypernym_paths() for a in path})
        ancestors.append([index.setdefault(a, len(index)) for a in nodes])
    leaves = [0] * len(index)
    for anc in ancestors:
        for a in anc:
            leaves[a] += 1
    names = sorted(index, key=index.get)  # type: ignore[arg-type]
    n = len(classes)
    return {
        "source": "WordNet 3.0 (Princeton University) hypernym paths via NLTK; ImageNet-1k classes "
        "(ILSVRC 2012 WordNet IDs, sorted); information content ln(classes / classes under the node)",
        "built_by": "benchmarks/imagenet_hierarchy.py",
        "classes": [
            {"wnid": c["wnid"], "name": s.lemma_names()[0].replace("_", " ")} for c, s in zip(classes, synsets)
        ],
        "nodes": [
            {"synset": name, "leaves": leaves[i], "ic": round(math.log(n / leaves[i]), 6)}
            for i, name in enumerate(names)
        ],
        "ancestors": ancestors,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--wordnet", default="/usr/share/wordnet", help="folder of WordNet 3.0's dict files")
    args = ap.parse_args()
    data = build(Path(args.wordnet))
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    tmp.replace(OUT)
    print(f"{OUT}: {len(data['classes'])} classes, {len(data['nodes'])} WordNet nodes")


if __name__ == "__main__":
    main()
