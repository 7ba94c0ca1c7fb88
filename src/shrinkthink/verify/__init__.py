"""Verifiers: lenient final-answer extraction and answer equivalence.

Tasks own their verifiers, and build them from these pieces:

    from shrinkthink.verify import extract_answer, answers_match
    answers_match(extract_answer("... so\\nAnswer: 1/2") or "", "0.5")  # True
"""

from shrinkthink.verify.extract import extract_answer, numbers_equal, parse_number
from shrinkthink.verify.match import answers_match, normalise

__all__ = ["answers_match", "extract_answer", "normalise", "numbers_equal", "parse_number"]
