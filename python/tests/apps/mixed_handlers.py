"""The Python handler of ClusterFixture's mixed pipeline (Swift → Python → Swift)."""

from autonomous import Table

mixed_enriched = Table("mixed_enriched")
mixed_scored = Table("mixed_scored")


@mixed_enriched.on_new_records(name="mixed-score", writes=[mixed_scored])
def score(records):
    for record in records:
        mixed_scored.append({"n": record["n"], "score": record["n"] * 2, "language": "python"})
