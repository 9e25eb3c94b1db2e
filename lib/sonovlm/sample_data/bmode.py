"""B-mode image formation from a tissue map: Rayleigh speckle, attenuation, TGC, log compression.

The model (a linear-array probe; every image column is one scan line, depth runs down the rows):

1. **Scatterers.** Each pixel holds a circular complex Gaussian scatterer amplitude
   ``(n1 + i n2) / sqrt(2)`` (``n1, n2 ~ N(0, 1)``) scaled by the tissue's echogenicity ``echo``
   (linear amplitude, 1 = reference soft tissue). Specular reflectors (fascia, capsules, skin,
   calcifications) add a coherent, real amplitude ``specular``.
2. **Point spread function.** A separable Gaussian PSF (``axial_resolution_mm`` along depth,
   ``lateral_resolution_mm`` across) applied to the complex field, rescaled by
   ``sqrt(4 pi sigma_ax sigma_lat)`` so that homogeneous tissue with ``echo = 1`` keeps unit mean
   power. The envelope of many random phasors per resolution cell is Rayleigh distributed: fully
   developed speckle, grains elongated laterally as in real linear-array images.
3. **Attenuation.** Round trip, frequency-proportional: the amplitude at depth ``z`` is multiplied
   by ``10 ** (-2 f ∫ alpha(z') dz' / 20)`` with ``alpha`` in dB/cm/MHz (per pixel, so a strongly
   attenuating mass shadows what lies behind it and a weakly attenuating one enhances it) and
   ``f`` the transmit frequency in MHz.
4. **Receiver noise** (complex Gaussian, ``noise_db`` relative to unit tissue) is added, then
   **time-gain compensation** amplifies by ``2 f tgc_alpha z`` dB: it makes tissue of the nominal
   attenuation ``tgc_alpha`` look uniform with depth and raises the noise floor at depth.
5. **Log compression.** ``20 log10`` of the envelope, mapped linearly from
   ``[display_max_db - dynamic_range_db, display_max_db]`` to grey levels 0..255 (uint8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class TissueMap:
    """Acoustic properties of the imaged plane, each ``(rows, cols)`` float (rows = depth).

    Attributes:
        echo: backscatter amplitude of the diffuse scatterers (1 = reference soft tissue).
        attenuation: attenuation coefficient, dB/cm/MHz.
        specular: coherent reflector amplitude (0 where none).
    """

    echo: np.ndarray
    attenuation: np.ndarray
    specular: np.ndarray


@dataclass(frozen=True)
class BModeSettings:
    """Probe, receiver and display settings of the simulated scanner."""

    frequency_mhz: float = 10.0
    axial_resolution_mm: float = 0.12  # Gaussian PSF sigma along depth
    lateral_resolution_mm: float = 0.3  # Gaussian PSF sigma across
    tgc_alpha_db_cm_mhz: float = 0.5  # the attenuation TGC compensates
    noise_db: float = -62.0
    dynamic_range_db: float = 60.0
    display_max_db: float = 30.0


#: The scanner :func:`render_bmode` and :func:`~sonovlm.sample_data.simulate_case` use by default.
DEFAULT_SETTINGS = BModeSettings()


def render_bmode(
    tissue: TissueMap,
    spacing_mm: tuple[float, float],
    rng: np.random.Generator,
    settings: BModeSettings = DEFAULT_SETTINGS,
) -> np.ndarray:
    """Simulate a B-mode image of ``tissue``.

    Args:
        tissue: the tissue map, ``(rows, cols)`` arrays; row 0 touches the probe.
        spacing_mm: ``(row_mm, col_mm)`` of the map.
        rng: source of the scatterer and noise realisations.
        settings: scanner settings.

    Returns:
        ``(rows, cols)`` uint8 log-compressed B-mode image.
    """
    row_mm, col_mm = spacing_mm
    rows, cols = tissue.echo.shape
    sigma = (settings.axial_resolution_mm / row_mm, settings.lateral_resolution_mm / col_mm)

    scatterers = rng.standard_normal((2, rows, cols), dtype=np.float32)
    scatterers *= tissue.echo[None] / math.sqrt(2.0)
    scatterers[0] += tissue.specular
    field_re = ndimage.gaussian_filter(scatterers[0], sigma, mode="reflect")
    field_im = ndimage.gaussian_filter(scatterers[1], sigma, mode="reflect")
    gain = math.sqrt(4.0 * math.pi * sigma[0] * sigma[1])

    f = settings.frequency_mhz
    dz_cm = row_mm / 10.0
    # Attenuation accumulated down to the middle of each pixel, one way; round trip doubles it.
    one_way_db = np.cumsum(tissue.attenuation, axis=0) * (f * dz_cm) - tissue.attenuation * (f * dz_cm / 2)
    attenuation_amp = 10.0 ** (-2.0 * one_way_db / 20.0) * gain

    noise = rng.standard_normal((2, rows, cols), dtype=np.float32) * (
        10.0 ** (settings.noise_db / 20.0) / math.sqrt(2.0)
    )
    received_re = field_re * attenuation_amp + noise[0]
    received_im = field_im * attenuation_amp + noise[1]

    depth_cm = (np.arange(rows) + 0.5) * dz_cm
    tgc_db = 2.0 * f * settings.tgc_alpha_db_cm_mhz * depth_cm
    envelope_db = 10.0 * np.log10(received_re**2 + received_im**2 + 1e-20) + tgc_db[:, None]

    low = settings.display_max_db - settings.dynamic_range_db
    grey = (envelope_db - low) * (255.0 / settings.dynamic_range_db)
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)
