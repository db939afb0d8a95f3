"""The timm names whose parity with timm bench/hub_parity.py verified, and the parameter counts it found
(with a 1000-class head), written by its --report (docs/parity.md); `--mode models` shows them."""

VERIFIED = frozenset({
})

PARAMETERS = {
}
