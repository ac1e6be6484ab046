"""Can the labels be trusted? ``audit``: wrong labels, outliers and ambiguous images found from
out-of-fold probabilities of linear probes on cached features; the audit page and fixes.csv; and
``relabel``: a corrected copy of DATA from an edited fixes.csv (the original is never touched)."""

from .audit import KINDS, AuditResult, Finding, audit_features
from .folder import audit_folder, audit_splits

__all__ = ["KINDS", "AuditResult", "Finding", "audit_features", "audit_folder", "audit_splits"]
