"""User-level differential privacy for fedlrs: events, ledger, accountants, release.

Everything that leaves a device goes through this package (DESIGN section 3):
contributions are clipped (:mod:`.clipping`), users Poisson-sampled
(:mod:`.sampling`), sums noised and normalised by the expected count
(:mod:`.mechanism`, :mod:`.noise`), and every release is first recorded as a
frozen :class:`DpEvent` in an append-only :class:`Ledger`. Epsilon is always
recomputed from the ledger (:func:`compute_epsilon`); a :class:`PrivacyBudget`
is checked before each release.
"""

from fedlrs.privacy.accountants import ACCOUNTANTS, EpsilonResult, compute_epsilon
from fedlrs.privacy.audit import AuditResult, audit_report
from fedlrs.privacy.budget import BudgetExceededError, PrivacyBudget
from fedlrs.privacy.calibration import CalibrationError, calibrate_noise_multiplier
from fedlrs.privacy.clipping import clip, clip_scales, flat_norms, ls_part_norms, ls_part_scales, ls_private_scales
from fedlrs.privacy.events import (DpEvent, InvalidEventError, accounted_noise_multiplier,
                                   per_part_noise_multiplier)
from fedlrs.privacy.ledger import (DuplicateReleaseError, Ledger, LedgerConflictError,
                                   LedgerCorruptError, LedgerError, move_aside)
from fedlrs.privacy.mechanism import GaussianSumRelease, method_of_moments_release
from fedlrs.privacy.noise import GaussianNoise
from fedlrs.privacy.release import PrivateServer
from fedlrs.privacy.report import build_privacy_report, write_privacy_report
from fedlrs.privacy.sampling import poisson_sample
from fedlrs.privacy.settings import PrivacySettings, RunSettings, SpentEpsilon

__all__ = [
    "ACCOUNTANTS",
    "AuditResult",
    "BudgetExceededError",
    "CalibrationError",
    "DpEvent",
    "DuplicateReleaseError",
    "EpsilonResult",
    "GaussianNoise",
    "GaussianSumRelease",
    "InvalidEventError",
    "Ledger",
    "LedgerConflictError",
    "LedgerCorruptError",
    "LedgerError",
    "PrivacyBudget",
    "PrivacySettings",
    "RunSettings",
    "PrivateServer",
    "SpentEpsilon",
    "accounted_noise_multiplier",
    "audit_report",
    "build_privacy_report",
    "calibrate_noise_multiplier",
    "clip",
    "clip_scales",
    "compute_epsilon",
    "flat_norms",
    "ls_part_norms",
    "ls_part_scales",
    "ls_private_scales",
    "method_of_moments_release",
    "move_aside",
    "per_part_noise_multiplier",
    "poisson_sample",
    "write_privacy_report",
]
