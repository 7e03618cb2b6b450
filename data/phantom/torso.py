"""The body around the heart: layout drawn once per patient, painted per slice (skin fat, chest wall,
ribs, lungs with vessels, diaphragm, liver, abdominal organs, mediastinum, spine, aorta, an arm)."""
from __future__ import annotations

import math

import numpy as np

from data.phantom.anatomy import Heart
from data.phantom.canvas import Canvas
from data.phantom.shapes import Ellipse, bump, draw, fourier, lookup, soft

# Body layout, drawn per patient: (low, high) ranges in mm in the heart-centred frame (see `Torso`).
SKIN_FAT_MM = (8, 18)  # subcutaneous fat at the reference BMI ...
SKIN_FAT_PER_BMI_MM, REFERENCE_BMI = 1.0, 22  # ... plus 1 mm per BMI unit above 22 ...
SKIN_FAT_LIMITS_MM = (6, 40)  # ... within these bounds
WALL_MUSCLE_MM = (7, 15)  # chest/abdominal wall muscle
CHEST_GAP_MM = (0, 22)  # between the RV and the chest wall (left of the heart)
TOP_GAP_MM = (40, 110)  # between the heart and the wall above it
BODY_RIGHT_MM, BODY_BOTTOM_MM = (190, 300), (260, 380)  # body extent right of / below the LV centre
BODY_TILT_DEG = (-12, 8)
BODY_HARMONICS = (0.04, 0.03, 0.02, 0.01)  # body outline (k = 2 ... 5), relative amplitudes
BODY_POWER = (2.0, 3.2)  # superellipse exponent of the body outline (> 2: squarer)
SKIN_FAT_HARMONICS = (0.35, 0.25, 0.15)  # skin fat thickness around the body (k = 1, 2, 3)
BREAST_FAT = (0.0, 0.8)  # extra anterior fat (fraction of the skin fat) ...
BREAST_ANGLE_PI, BREAST_WIDTH_RAD = (0.8, 1.1), (0.4, 0.8)  # ... at this angle (x pi), half-width (rad)
MUSCLE_HARMONICS = (0.3, 0.2, 0.1)  # wall muscle thickness around the body (k = 1, 2, 3)
WALL_WOBBLE = 0.05  # fat and muscle thickness vary by this fraction with the coarse texture
# Diaphragm dome v = d0 + d1 u + d2 u^2 (mm), rising towards the apex.
DIAPHRAGM_GAP_MM = (0, 22)  # d0 beyond the epicardium
DIAPHRAGM_SLOPE = (-0.7, -0.25)  # d1
DIAPHRAGM_CURVE_PER_MM = (0.0015, 0.004)  # d2: a dome, highest to the right of the heart
DIAPHRAGM_RISE_MM = (20, 55)  # from base to apex slice
DIAPHRAGM_WOBBLE_MM = 3.0  # irregularity with the coarse texture
DIAPHRAGM_HALF_MM = 2.0  # the muscle band is 2 x this thick, just below the lung
LUNG_FAT_LINE_MM, LUNG_FAT_LINE_WOBBLE_MM = 0.6, 1.2  # intermittent fat line between wall and lung
ABDOMEN_BELOW_MM = 4.0  # the abdomen starts this far below the lung boundary
# Liver: left of a lobulated boundary u = l0 + l1 (v - d0) + lobes.
LIVER_EDGE_MM, LIVER_EDGE_SLOPE = (-10, 50), (-0.5, 0.3)
LIVER_LOBES_MM, LIVER_LOBE_HARMONICS = 25.0, (0.6, 0.4, 0.3)  # lobulation depth and shape (k = 1, 2, 3)
LIVER_LOBE_PERIOD_MM = 80.0  # v / this is the lobulation angle (rad)
LIVER_EDGE_WOBBLE_MM = 10  # irregularity with the coarse texture
LIVER_VESSELS = (8, 20)  # per slice (integers, high exclusive)
LIVER_VESSEL_OFFSET_MM = ((-20, 130), (5, 200))  # left of the liver edge, below the diaphragm
LIVER_VESSEL_RADIUS_MM, LIVER_VESSEL_ELONGATION = (1.5, 5), (1, 2.5)
VESSEL_SIGNAL = (0.5, 1.0)  # vessels' signal (fraction of blood): partial volume, flow
# Abdominal organs: tubes (u, v, zeta, in-plane radius, half-length along zeta), cut by each slice.
ORGAN_COUNT = (200, 260)  # integers, high exclusive; the first two are stomach and spleen
ORGAN_U_FROM_LIVER_MM, ORGAN_U_MAX_MM = -40, 230
ORGAN_V_MM = (-50, 240)  # below d0
ORGAN_ZETA_MARGIN_MM = (-30, 40)  # from above the base to beyond the apex
LOOP_RADIUS_MM, LOOP_HALF_LENGTH_MM = (9, 24), (12, 45)
STOMACH = ((50, 100), (30, 70), (0.3, 0.7), (40, 55))  # u, v below d0, zeta (fraction of L), radius (mm)
SPLEEN = ((130, 180), (10, 60), (0.0, 0.5), (45, 60))  # likewise
BIG_ORGAN_HALF_LENGTH_MM = 60.0  # stomach and spleen
ORGAN_TEXTURE = (0.03, 0.2)  # fine texture amplitude per organ
ORGAN_WALL_PROBABILITY = 0.5  # dark wall (else a fat plane) against its neighbours
MIN_CUT_MM2 = 16.0  # cuts with a smaller squared radius are left out
ORGAN_WARP_MM, ORGAN_WARP_SHIFT_PX = 9.0, (17, 23)  # edges warped by the coarse texture (shifted copy for v)
ORGAN_LEVEL_POWER = 1.8  # level = lo + (hi - lo) x^1.8: most loops dark-grey, a few bright with fluid
ORGAN_COARSE = 0.12  # coarse texture amplitude of organs
ORGAN_WALL_MM = 1.2  # dark wall or fat plane where two organs touch
ORGAN_FILL_MM = 5.0  # organs stop this short of their cell's power radius: fat shows between them
ORGAN_RIM_MM, ORGAN_RIM_HALF_MM = 1.0, 0.8  # bowel wall band against the fat
WALL_SIGNAL = 0.15  # bowel wall (fraction of blood)
# Spine and aorta.
SPINE_ANGLE_DEG = (-5, 35)  # direction from the heart to the spine
SPINE_INSET_MM, VERTEBRA_RADIUS_MM = (25, 45), (14, 19)  # vertebra inside the skin fat
VERTEBRA_ASPECT, VERTEBRA_HARMONICS = 0.85, (0.05,)
CORTEX_MM = 2.0  # dark vertebral cortex ...
CORTEX_SIGNAL = 0.06  # ... signal (fraction of blood)
PARASPINAL_MM = (22, 15)  # semi-axes of the paraspinal muscles ...
PARASPINAL_BEHIND_MM, PARASPINAL_SIDE_MM = 10, 24  # ... behind the vertebra's edge, either side
AORTA_RADIUS_MM, AORTA_OFFSET_MM = (9, 13), (-25, 15)  # descending aorta, sideways offset
AORTA_GAP_MM, AORTA_WALL_MM, AORTA_ASPECT = 4, 1.5, 0.95  # in front of the vertebra
# Mediastinum beside the heart base (the hilum): a fat pad with vessels, fading towards the apex.
HILUM_ANGLE_DEG = (-35, 35)  # from behind the lateral wall
HILUM_DISTANCE_MM, HILUM_RADIUS_MM = (10, 25), (30, 45)  # beyond the epicardium
HILUM_VESSEL_COUNT, HILUM_VESSEL_RADIUS_MM = (1, 5), (4, 12)
HILUM_BRIGHT_PROBABILITY = 0.75  # a vessel (bright), else oesophagus / collapsed vessel (grey)
HILUM_FADE = 2.2  # fades out by 1 / 2.2 of the LV length
HILUM_MIN_FADE = 0.05  # not drawn below this
HILUM_ROTATION_RAD, HILUM_HARMONICS = (-0.5, 0.5), (0.15, 0.1, 0.05)
HILUM_VESSEL_REACH = 0.6  # vessels within this fraction of the pad
HILUM_VESSEL_ELONGATION = (0.9, 1.3)
HILUM_WALL_MM, HILUM_WALL_SIGNAL = 1.2, 0.1  # grey structures' dark wall (signal: fraction of blood)
# Lungs.
LUNG_VESSEL_COUNT = (50, 110)  # per patient (integers, high exclusive)
LUNG_VESSEL_MARGIN_MM = 3.0  # kept this far above the diaphragm
HILUM_SHARE, HILUM_SPREAD_MM = 0.6, 70  # share of vessels scattered around the hilum, and its sd
LUNG_FIELD_MM = ((-120, 230), -200)  # where the rest lie: u range, top v (down to d0)
LUNG_VESSEL_RADIUS_MM = (0.6, 2.2)
DOT_SHARE, SEGMENT_ELONGATION = 0.85, (1.5, 3.5)  # most vessels are cut across, the rest along
# Chest wall: ribs and costal cartilages on an arc of the body outline (angles x pi, about its centre).
RIB_COUNT, RIB_ARC_PI = (2, 6), (1.05, 1.9)
RIB_DEPTH = 0.5  # ribs lie at skin fat + this x the muscle thickness
RIB_SEMI_AXES_MM = ((6, 11), (3.5, 5.5))
RIB_CORTEX_MM, RIB_CORTEX_SIGNAL = 1.2, 0.05  # dark cortex (signal: fraction of blood)
CARTILAGE_PROBABILITY = 0.7
CARTILAGE_START_PI, CARTILAGE_COUNT, CARTILAGE_STEP_RAD = (0.75, 0.95), (3, 7), (0.12, 0.2)
CARTILAGE_DEPTH = 0.55  # like RIB_DEPTH
CARTILAGE_SEMI_AXES_MM = ((5, 9), (3.5, 6))
CARTILAGE_RIM_MM, CARTILAGE_RIM_SIGNAL = 1.0, 0.08
CARTILAGE_SIGNAL = (0.12, 0.3)  # grey (absolute, like the tissue levels)
# An arm beside the chest, outside the body outline.
ARM_PROBABILITY, ARM_ANGLE_DEG = 0.4, (-110, -60)
ARM_GAP_MM, ARM_SEMI_AXES_MM, ARM_HARMONICS = 55, (48, 40), (0.05, 0.03)
ARM_FAT_MM = 8  # fat around the arm muscle
HUMERUS_OFFSET_MM, HUMERUS_MM, MARROW_MM = 5, (11, 10), (8, 7)  # bone: outer and marrow semi-axes
HUMERUS_CORTEX_SIGNAL = 0.05


class Torso:
    """Patient-level layout of the body around the heart, in mm in a frame centred on the mid LV.

    The frame is the image's: u to the right (posterior/left of the patient), v down (towards the feet).
    The chest wall is left of and above the heart, lungs above and right, abdomen below.
    """

    def __init__(self, rng: np.random.Generator, heart: Heart, bmi: float):
        self.fat_t = float(np.clip(draw(rng, SKIN_FAT_MM) + SKIN_FAT_PER_BMI_MM * (bmi - REFERENCE_BMI),
                                   *SKIN_FAT_LIMITS_MM))
        self.mus_t = draw(rng, WALL_MUSCLE_MM)
        heart_r = heart.R + heart.W
        left = heart_r + heart.H + draw(rng, CHEST_GAP_MM) + self.mus_t + self.fat_t
        top = heart_r + draw(rng, TOP_GAP_MM) + self.mus_t + self.fat_t
        right, bottom = draw(rng, BODY_RIGHT_MM), draw(rng, BODY_BOTTOM_MM)
        self.body = Ellipse((0.5 * (right - left), 0.5 * (bottom - top)), 0.5 * (left + right),
                            0.5 * (top + bottom), math.radians(draw(rng, BODY_TILT_DEG)),
                            fourier(rng, BODY_HARMONICS), draw(rng, BODY_POWER))
        self.fat_shape = fourier(rng, SKIN_FAT_HARMONICS, k0=1) * (
            1 + draw(rng, BREAST_FAT) * bump(draw(rng, BREAST_ANGLE_PI) * np.pi, draw(rng, BREAST_WIDTH_RAD)))
        self.mus_shape = fourier(rng, MUSCLE_HARMONICS, k0=1)
        # Diaphragm dome v = d0 + d1 u + d2 u^2 separates thorax (above) from abdomen (below);
        # relative to the heart it rises towards the apex.
        self.d0 = heart_r + draw(rng, DIAPHRAGM_GAP_MM)
        self.d1 = draw(rng, DIAPHRAGM_SLOPE)
        self.d2 = draw(rng, DIAPHRAGM_CURVE_PER_MM)
        self.rise = draw(rng, DIAPHRAGM_RISE_MM)
        self.liver_l0, self.liver_l1 = draw(rng, LIVER_EDGE_MM), draw(rng, LIVER_EDGE_SLOPE)
        self.liver_edge = LIVER_LOBES_MM * (fourier(rng, LIVER_LOBE_HARMONICS, k0=1) - 1.0)  # lobulated (mm)
        # Abdominal organs as balls (u, v, zeta, radius) in 3D: each slice cuts them consistently.
        # The first two are the stomach and the spleen; the rest are bowel loops.
        # Loops are tubes: an in-plane radius and a longer extent along the slices.
        n = int(rng.integers(*ORGAN_COUNT))
        self.organs = np.stack([rng.uniform(self.liver_l0 + ORGAN_U_FROM_LIVER_MM, ORGAN_U_MAX_MM, n),
                                self.d0 + rng.uniform(*ORGAN_V_MM, n),
                                rng.uniform(ORGAN_ZETA_MARGIN_MM[0], heart.L + ORGAN_ZETA_MARGIN_MM[1], n),
                                rng.uniform(*LOOP_RADIUS_MM, n), rng.uniform(*LOOP_HALF_LENGTH_MM, n)], axis=1)
        for i, (u, v, zeta, r) in enumerate((STOMACH, SPLEEN)):
            self.organs[i] = (draw(rng, u), self.d0 + draw(rng, v), heart.L * draw(rng, zeta), draw(rng, r),
                              BIG_ORGAN_HALF_LENGTH_MM)
        self.organ_texture = rng.uniform(*ORGAN_TEXTURE, n)
        self.organ_level = rng.random(n)  # where in the style's organ range; most loops are darker
        self.organ_wall = rng.random(n) < ORGAN_WALL_PROBABILITY
        spine_dir = math.radians(draw(rng, SPINE_ANGLE_DEG))
        self.spine_dir = np.array([math.cos(spine_dir), math.sin(spine_dir)])
        self.spine_inset = draw(rng, SPINE_INSET_MM)
        self.vert_r = draw(rng, VERTEBRA_RADIUS_MM)
        self.aorta_r = draw(rng, AORTA_RADIUS_MM)
        self.aorta_off = draw(rng, AORTA_OFFSET_MM)
        self.arm = rng.random() < ARM_PROBABILITY
        self.arm_angle = math.radians(draw(rng, ARM_ANGLE_DEG))
        self.n_lung_vessels = int(rng.integers(*LUNG_VESSEL_COUNT))
        # Posterior mediastinum beside the heart: fat with pulmonary veins / left atrium / oesophagus,
        # fading towards the apex. Lung vessels crowd around it (the hilum).
        ang = heart.septum + np.pi + math.radians(draw(rng, HILUM_ANGLE_DEG))  # behind the lateral wall
        self.hilum = (heart.R + heart.W + draw(rng, HILUM_DISTANCE_MM)) * np.array([math.cos(ang), math.sin(ang)])
        self.hilum_r = draw(rng, HILUM_RADIUS_MM)
        self.hilum_vessels = [(rng.uniform(0, 2 * np.pi), rng.uniform(0, 1), draw(rng, HILUM_VESSEL_RADIUS_MM),
                               rng.random() < HILUM_BRIGHT_PROBABILITY)
                              for _ in range(int(rng.integers(*HILUM_VESSEL_COUNT)))]
        self.cartilage = rng.random() < CARTILAGE_PROBABILITY


def render_torso(canvas: Canvas, torso: Torso, zeta: float, t: float, rng: np.random.Generator) -> None:
    """Everything but the heart: shared by ED and ES of the same slice (only the noise differs)."""
    u, v, px = canvas.u, canvas.v, canvas.px
    body = torso.body
    d_body = body.sd(u, v)
    canvas.paint(soft(d_body, px), "fat")
    # Skin fat of varying thickness, chest/abdominal wall muscle, then the cavity (fat where no organ
    # is painted; an intermittent thin fat line remains between the wall and the lung).
    theta = np.arctan2(v - body.c[1], u - body.c[0]) - body.rot
    fat_t = torso.fat_t * lookup(torso.fat_shape, theta) * (1 + WALL_WOBBLE * canvas.coarse)
    d_mus = d_body + fat_t
    mus_t = torso.mus_t * lookup(torso.mus_shape, theta) * (1 + WALL_WOBBLE * canvas.coarse)
    canvas.paint(soft(d_mus, px), "muscle")
    d_cav = d_mus + mus_t
    cavity = soft(d_cav, px)
    canvas.paint(cavity, "fat")
    # Ribs across the lateral/upper wall: dark cortex around grey marrow.
    for _ in range(int(rng.integers(*RIB_COUNT))):
        ang = draw(rng, RIB_ARC_PI) * np.pi + body.rot
        rr = 1 - (torso.fat_t + RIB_DEPTH * torso.mus_t) / min(body.a, body.b)
        c = (body.c[0] + rr * body.a * math.cos(ang), body.c[1] + rr * body.b * math.sin(ang))
        rib = Ellipse(c, draw(rng, RIB_SEMI_AXES_MM[0]), draw(rng, RIB_SEMI_AXES_MM[1]), ang + np.pi / 2)
        canvas.blob(rib.grown(RIB_CORTEX_MM), "muscle", level=RIB_CORTEX_SIGNAL * canvas.tissue["blood"])
        canvas.blob(rib, "marrow")
    # Costal cartilages: a chain of grey ovals in the anterior chest wall.
    if torso.cartilage:
        a0 = draw(rng, CARTILAGE_START_PI) * np.pi
        for i in range(int(rng.integers(*CARTILAGE_COUNT))):
            ang = a0 + i * draw(rng, CARTILAGE_STEP_RAD) + body.rot
            rr = 1 - (torso.fat_t + CARTILAGE_DEPTH * torso.mus_t) / min(body.a, body.b)
            c = (body.c[0] + rr * body.a * math.cos(ang), body.c[1] + rr * body.b * math.sin(ang))
            rib = Ellipse(c, draw(rng, CARTILAGE_SEMI_AXES_MM[0]), draw(rng, CARTILAGE_SEMI_AXES_MM[1]),
                          ang + np.pi / 2)
            canvas.blob(rib.grown(CARTILAGE_RIM_MM), "muscle", level=CARTILAGE_RIM_SIGNAL * canvas.tissue["blood"])
            canvas.blob(rib, "marrow", level=draw(rng, CARTILAGE_SIGNAL))
    # Thorax above the diaphragm: lungs (very dark, bright vessels); abdomen below it.
    d0 = torso.d0 - torso.rise * (t - 0.5)
    diaphragm = d0 + torso.d1 * u + torso.d2 * u * u + DIAPHRAGM_WOBBLE_MM * canvas.coarse
    d_dia = (v - diaphragm) / math.sqrt(1 + torso.d1 ** 2)
    thorax = soft(d_cav + LUNG_FAT_LINE_MM + np.clip(LUNG_FAT_LINE_WOBBLE_MM * canvas.coarse, 0, None), px) * soft(
        d_dia, px)
    abdomen = cavity * soft(-d_dia - ABDOMEN_BELOW_MM, px)
    canvas.paint(thorax, "lung")
    canvas.paint(cavity * soft(np.abs(d_dia + DIAPHRAGM_HALF_MM) - DIAPHRAGM_HALF_MM, px), "muscle")  # the diaphragm
    # Liver on the left of the abdomen, with bright vessels.
    lb = (torso.liver_l0 + torso.liver_l1 * (v - d0) + LIVER_EDGE_WOBBLE_MM * canvas.coarse
          + lookup(torso.liver_edge, v / LIVER_LOBE_PERIOD_MM))
    liver = abdomen * soft(u - lb, px)
    _abdomen(canvas, torso, abdomen * (1 - liver), zeta)
    canvas.paint(liver, "liver")
    for _ in range(int(rng.integers(*LIVER_VESSELS))):
        c = (torso.liver_l0 - draw(rng, LIVER_VESSEL_OFFSET_MM[0]), d0 + draw(rng, LIVER_VESSEL_OFFSET_MM[1]))
        r = draw(rng, LIVER_VESSEL_RADIUS_MM)
        canvas.blob(Ellipse(c, r * draw(rng, LIVER_VESSEL_ELONGATION), r, rng.uniform(0, np.pi)), "blood",
                    level=draw(rng, VESSEL_SIGNAL) * canvas.tissue["blood"], clip=liver)
    # Mediastinum beside the heart base: a fat pad with round vessels (bright) or oesophagus (grey).
    fade = max(0.0, 1.0 - HILUM_FADE * t)
    if fade > HILUM_MIN_FADE:
        hc = torso.hilum * (0.7 + 0.3 * fade)
        pad = Ellipse(tuple(hc), torso.hilum_r * (0.5 + 0.5 * fade), torso.hilum_r * (0.4 + 0.4 * fade),
                      draw(rng, HILUM_ROTATION_RAD), fourier(rng, HILUM_HARMONICS))
        canvas.blob(pad, "fat", clip=cavity)
        for ang, rr, r, bright in torso.hilum_vessels:
            reach = rr * HILUM_VESSEL_REACH
            c = (hc[0] + reach * pad.a * math.cos(ang), hc[1] + reach * pad.b * math.sin(ang))
            r = r * (0.5 + 0.5 * fade)
            e = Ellipse(c, r * draw(rng, HILUM_VESSEL_ELONGATION), r, rng.uniform(0, np.pi))
            if not bright:  # oesophagus / collapsed vessel: grey with a dark wall
                canvas.blob(e.grown(HILUM_WALL_MM), "muscle", level=HILUM_WALL_SIGNAL * canvas.tissue["blood"],
                            clip=cavity)
            canvas.blob(e, "blood" if bright else "muscle", clip=cavity)
    # Lung vessels: bright dots and short segments, crowded towards the hilum.
    inner = thorax * (d_dia < -LUNG_VESSEL_MARGIN_MM)
    for _ in range(torso.n_lung_vessels):
        if rng.random() < HILUM_SHARE:
            c = tuple(torso.hilum + rng.normal(0, HILUM_SPREAD_MM, 2))
        else:
            c = (draw(rng, LUNG_FIELD_MM[0]), rng.uniform(LUNG_FIELD_MM[1], d0))
        r = draw(rng, LUNG_VESSEL_RADIUS_MM)
        length = r if rng.random() < DOT_SHARE else r * draw(rng, SEGMENT_ELONGATION)
        canvas.blob(Ellipse(c, length, r, rng.uniform(0, np.pi)), "blood",
                    level=draw(rng, VESSEL_SIGNAL) * canvas.tissue["blood"], clip=inner)
    # Spine (vertebral body, cortex, paraspinal muscles) and the descending aorta in front of it.
    e1 = np.array([math.cos(body.rot), math.sin(body.rot)])
    e2 = np.array([-math.sin(body.rot), math.cos(body.rot)])
    reach = math.hypot(body.a * (torso.spine_dir @ e1), body.b * (torso.spine_dir @ e2))
    dist = reach + float(torso.spine_dir @ np.array(body.c)) - torso.fat_t - torso.spine_inset - torso.vert_r
    sc = torso.spine_dir * dist
    perp = np.array([-torso.spine_dir[1], torso.spine_dir[0]])
    for side in (-1, 1):
        pm = sc + torso.spine_dir * (torso.vert_r + PARASPINAL_BEHIND_MM) + side * perp * PARASPINAL_SIDE_MM
        canvas.blob(Ellipse(tuple(pm), *PARASPINAL_MM, math.atan2(perp[1], perp[0])), "muscle", clip=cavity)
    vert = Ellipse(tuple(sc), torso.vert_r, torso.vert_r * VERTEBRA_ASPECT, rng.uniform(0, np.pi),
                   fourier(rng, VERTEBRA_HARMONICS))
    canvas.blob(vert.grown(CORTEX_MM), "muscle", level=CORTEX_SIGNAL * canvas.tissue["blood"], clip=cavity)
    canvas.blob(vert, "marrow", clip=cavity)
    ac = sc - torso.spine_dir * (torso.vert_r + torso.aorta_r + AORTA_GAP_MM) + perp * torso.aorta_off
    wall_r = torso.aorta_r + AORTA_WALL_MM
    canvas.blob(Ellipse(tuple(ac), wall_r, wall_r), "muscle", clip=cavity)
    canvas.blob(Ellipse(tuple(ac), torso.aorta_r, torso.aorta_r * AORTA_ASPECT), "blood", clip=cavity)
    # An arm beside the chest (outside the body outline), often off-centre and banded.
    if torso.arm:
        ang = torso.arm_angle
        dirv = np.array([math.cos(ang), math.sin(ang)])
        reach = math.hypot(body.a * math.cos(ang - body.rot), body.b * math.sin(ang - body.rot))
        ac = np.array(body.c) + dirv * (reach + ARM_GAP_MM)
        arm = Ellipse(tuple(ac), *ARM_SEMI_AXES_MM, ang, fourier(rng, ARM_HARMONICS))
        canvas.blob(arm, "fat")
        canvas.blob(arm.grown(-ARM_FAT_MM), "muscle")
        bone = tuple(ac + dirv * HUMERUS_OFFSET_MM)
        canvas.blob(Ellipse(bone, *HUMERUS_MM), "muscle", level=HUMERUS_CORTEX_SIGNAL * canvas.tissue["blood"])
        canvas.blob(Ellipse(bone, *MARROW_MM), "marrow")


def _abdomen(canvas: Canvas, torso: Torso, alpha: np.ndarray, zeta: float) -> None:
    """Stomach, spleen and bowel: the slice's cuts through the torso's organ tubes, packed as a warped
    power diagram (irregular rounded organs of their own brightness and texture), with fat between
    them and a dark wall or a thin fat plane where two touch."""
    near = np.nonzero(alpha > 0)
    organs = torso.organs
    weight = organs[:, 3] ** 2 * (1 - ((zeta - organs[:, 2]) / organs[:, 4]) ** 2)  # squared radius of each cut
    cut = np.nonzero(weight > MIN_CUT_MM2)[0]
    if near[0].size == 0 or cut.size < 2:
        return
    seeds, weight = organs[cut, :2], weight[cut]
    warp = (ORGAN_WARP_MM * canvas.coarse[near],
            ORGAN_WARP_MM * np.roll(canvas.coarse, ORGAN_WARP_SHIFT_PX, axis=(0, 1))[near])
    u, v = canvas.u[near] + warp[0], canvas.v[near] + warp[1]
    d2 = (u[None] - seeds[:, :1]) ** 2 + (v[None] - seeds[:, 1:]) ** 2 - weight[:, None]
    cols = np.arange(d2.shape[1])
    cell = np.argmin(d2, axis=0)
    first = d2[cell, cols]
    d2[cell, cols] = np.inf
    other = np.argmin(d2, axis=0)
    second = d2[other, cols]
    dist = np.linalg.norm(seeds[cell] - seeds[other], axis=1)
    gap = (second - first) / (2 * np.maximum(dist, 1e-6))  # mm to the boundary between the two cells
    lo, hi = canvas.tissue["organ_lo"], canvas.tissue["organ_hi"]
    x = torso.organ_level[cut]
    level = lo + (hi - lo) * x ** ORGAN_LEVEL_POWER
    level[cut == 1] = canvas.tissue["spleen"]
    value = level[cell] * (1 + torso.organ_texture[cut][cell] * canvas.fine[near] + ORGAN_COARSE * canvas.coarse[near])
    wall = np.where(torso.organ_wall[cut], WALL_SIGNAL * canvas.tissue["blood"], canvas.tissue["fat"])
    value = value + soft(gap - ORGAN_WALL_MM, canvas.px) * (wall[cell] - value)
    # > 0: between organs, where fat shows (organs fill most of their cell: a little fat, not a sea).
    outside = np.sqrt(np.maximum(first + weight[cell], 0)) - np.sqrt(weight[cell]) - ORGAN_FILL_MM
    rim = soft(np.abs(outside + ORGAN_RIM_MM) - ORGAN_RIM_HALF_MM, canvas.px) * torso.organ_wall[cut][cell]
    value = value + rim * (WALL_SIGNAL * canvas.tissue["blood"] - value)  # bowel wall against the fat
    fat = canvas.value("fat", near)
    value = value + soft(-outside, canvas.px) * (fat - value)
    target = canvas.img[near]
    canvas.img[near] = target + alpha[near] * (value - target)
