"""DVC stage `clean`: decode, validate, de-duplicate (data/ingest -> data/clean, plus
data/clean/near_duplicate_conflicts.json). Likely label errors are the audit stage's job (after split)."""

from trainwise.components.atomic_io import write_json_atomic
from trainwise.components.data.contract import DatasetWriter, iter_batches
from trainwise.components.quality.cleaning import CleanOptions, clean_dataset, require_rows_per_class
from trainwise.components.quality.duplicates import write_near_pairs
from trainwise.pipelines.stage import Stage, run_stage


def main() -> None:
    with Stage("clean") as stage:
        p = stage.params.clean
        src, out = stage.path(stage.paths.ingest), stage.path(stage.paths.clean)
        raw = stage.record_input(src)
        image_size, channels, shape_notes = _image_shape(stage, src, raw)
        options = CleanOptions(
            image_size=image_size, channels=channels, drop_duplicates=p.drop_duplicates,
            payload_length=p.payload_length, near_duplicate_distance=p.near_duplicate_distance)
        modality = raw.get("payload", "image")
        # photos: data/clean extends data/ingest (keys, groups); the files' bytes stay where ingest wrote
        # them, written once (components/data/contract.py)
        with DatasetWriter(out, classes=raw["classes"], base=src if modality == "image" else None,
                           metadata={"source": raw.get("source"), **shape_notes}) as writer:
            stats = clean_dataset(iter_batches(src), writer, n_classes=len(raw["classes"]),
                                  modality=modality, options=options, classes=raw["classes"],
                                  feature_names=raw.get("feature_names"))
            require_rows_per_class(writer.class_counts, raw["classes"])  # before split and the baselines trip on it
            manifest = writer.close(rows_in=stats["rows_in"], set_aside=stats["set_aside"], extra=stats["extra"])
        write_json_atomic(out / "near_duplicate_conflicts.json", stats["conflicts"])
        write_near_pairs(out, stats["near_pairs"])  # split's leakage check reads them: no second search
        aside = manifest["set_aside"]
        stage.log("%d rows in, %d kept, set aside: %s", manifest["rows_in"], manifest["rows"], aside or "none")
        m = stats["metrics"]
        stage.log("duplicates: %d exact (+%d label conflicts), %d near-duplicate groups (%d disagree on the label)",
                  m["clean/exact_duplicates"], m["clean/exact_duplicate_conflicts"], m["clean/near_duplicate_groups"],
                  m["clean/near_duplicate_conflicts"])
        notes = stats["extra"].get("decode_notes") or {}
        if any(notes.values()):
            stage.log("decoding: %d image(s) turned upright (EXIF orientation), %d 16-bit grey image(s) scaled to "
                      "8 bits, %d animated image(s) stored as their first frame (manifest: decode_notes)",
                      notes["exif_rotated"], notes["scaled_16bit"], notes["animated_first_frame"])
        stage.finish({"clean/rows_in": manifest["rows_in"], "clean/rows": manifest["rows"],
                      "clean/set_aside": sum(aside.values()),
                      **{f"clean/set_aside/{reason}": n for reason, n in aside.items()}, **m},
                     artifacts=[out / "manifest.json", out / "set_aside.jsonl", out / "near_duplicate_conflicts.json"])


def _image_shape(stage, src, raw) -> tuple[tuple[int, int], int, dict]:
    """clean.image_size / channels with `auto` decided from the images (components/data/image_stats.py);
    warns when an explicit shape obviously does not fit them. Manifest keys for images only."""
    p = stage.params.clean
    if raw.get("payload", "image") != "image":
        return (1, 1), 1, {}
    from trainwise.components.data.image_stats import choose_shape, survey_images

    from trainwise.components.models.backbone_names import IMAGE_BUILTIN_INPUT

    backbone = stage.params.train.backbone
    backbone_input = IMAGE_BUILTIN_INPUT.get(backbone) if backbone else None
    if backbone and backbone_input is None:  # torch (and timm): only for a backbone not built in
        from trainwise.components.models.backbones import expected_input

        backbone_input = expected_input(backbone)
    # colour matters to `channels: auto` without a backbone, and to the warning for `channels: 1`
    survey = survey_images(iter_batches(src), colour=p.channels == 1 or (p.channels == "auto" and not backbone_input))
    size, channels, warnings = choose_shape(survey, image_size=p.image_size, channels=p.channels,
                                            max_side=p.max_image_side, backbone_input=backbone_input)
    for w in warnings:
        stage.log("warning: %s", w)
    stage.log("images: %d surveyed, typically %dx%d, %s -> stored as %dx%dx%d%s", survey.surveyed,
              *survey.typical, f"{survey.colour} in colour" if survey.colour_surveyed else "colour not surveyed",
              *size, channels,
              " (auto)" if "auto" in (p.image_size, p.channels) else "")
    return size, channels, {"image_shape_chosen": {"image_size": list(size), "channels": channels,
                                                   "requested": {"image_size": p.image_size, "channels": p.channels},
                                                   "typical_size": list(survey.typical),
                                                   "colour_images": survey.colour if survey.colour_surveyed else None,
                                                   "surveyed": survey.surveyed,
                                                   "degenerate_left_out": survey.degenerate},
                            "image_warnings": warnings}


if __name__ == "__main__":
    run_stage(main)
