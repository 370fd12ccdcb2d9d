"""Input and output screening, usable without a gateway: ``verify_input(text, policy)`` and ``verify_output``.

Detectors (each ``name`` + ``detect(text) -> list[Finding]``): rules.py and classifier.py (prompt injection and
jailbreak, English and Chinese), pii.py (validated personal information), obfuscation.py (hidden text decoded
and screened again), secret.py, topics.py. docs/security.md has what each does and its measured rates.
"""

from moecloud.security.findings import CATEGORIES, Category, Detector, Finding, Verdict
from moecloud.security.policy import Action, Actions, Policy
from moecloud.security.screen import verify_input, verify_output

__all__ = ["CATEGORIES", "Action", "Actions", "Category", "Detector", "Finding", "Policy", "Verdict",
           "verify_input", "verify_output"]
