"""Copy the README gallery's figures out of a report folder (``make report`` first).

    python tools/make_gallery.py --report reports --out docs/gallery
"""
import argparse
import shutil
import sys
from pathlib import Path

# (report figure, caption) in the README's order
FIGURES = [
    ("00_tour/trajectory.png", "A denoising trajectory: x_t and the predicted clean image at each step"),
    ("01_information_decomposition/word_maps.png", "Where each word's information lies, given the rest of the prompt"),
    ("01_information_decomposition/localisation_example.png", "Unsupervised localisation against the exact masks"),
    ("02_partial_information_decomposition/pid_maps.png", "Redundancy, unique information and synergy of two words, per pixel"),
    ("03_concept_decomposition/decomposition.png", "A concept as a sparse mix of words (Conceptor)"),
    ("04_timestep_visualization/attention_steps.png", "Cross-attention of each word, step by step"),
    ("04_timestep_visualization/emergence.png", "When each attribute is settled during denoising"),
    ("05_bias_audit/heatmap_colour.png", "A bias audit: subjects × groups with corrected tests"),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", default="reports")
    ap.add_argument("--out", default="docs/gallery")
    a = ap.parse_args(argv)
    report, out = Path(a.report), Path(a.out)
    missing = [f for f, _ in FIGURES if not (report / f).exists()]
    if missing:
        print(f"missing in {report}: {missing}; run `make report` first", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for f, caption in FIGURES:
        name = f.replace("/", "__")
        shutil.copyfile(report / f, out / name)
        lines.append(f"| ![{caption}]({out.as_posix()}/{name}) | {caption} (`{f.split('/')[0]}`) |")
    print("| figure | what it shows |\n|---|---|\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
