"""Loss functions of the searches.

FBNet (Wu et al. 2019, eq. 2): ``L = CE * alpha * (log LAT)^beta``, ``LAT`` the expected latency
of the sampled architecture. The AnnaAraslanova/FBNet code computes ``alpha * CE * log(LAT^beta)``
``= alpha * beta * CE * log LAT`` (beta multiplies instead of exponentiating, its README calls it
a defect); ``form="repo"`` reproduces that, ``form="paper"`` (default) is the paper's. In the
paper form ``log LAT`` must be positive: LAT is in microseconds (or Mops), so > 1 in practice.
"""
import megengine.functional as F

FORMS = ("paper", "repo")


def fbnet_loss(ce, latency, alpha=0.2, beta=0.6, form="paper"):
    """The FBNet loss from the mean cross-entropy ``ce`` and the expected latency (tensors)."""
    if form == "paper":
        return alpha * ce * F.log(latency) ** beta
    if form == "repo":
        return alpha * ce * beta * F.log(latency)
    raise ValueError("form must be one of %s, got %r" % (FORMS, form))
