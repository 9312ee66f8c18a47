"""A pytest plugin for the mutation run only (scripts/mutation.sh, `[tool.mutmut]` in
pyproject.toml): Hypothesis derandomized and without shrinking, with no example database.

A failing example kills a mutant whether or not it is shrunk, so shrinking only costs time;
derandomizing makes every run of the same mutant give the same verdict. Loaded with
`-p tests.property.mutation_profile`; the ordinary test runs never load it."""

from hypothesis import Phase, settings

settings.register_profile(
    "mutation",
    derandomize=True,
    database=None,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    print_blob=False,
)
settings.load_profile("mutation")
