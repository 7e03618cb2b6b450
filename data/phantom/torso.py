"""The body around the heart: layout drawn once per patient, painted per slice (skin fat, chest wall,
ribs, lungs with vessels, diaphragm, liver, abdominal organs, mediastinum, spine, aorta, an arm)."""
from __future__ import annotations

import math

import numpy as np

from data.phantom.anatomy import Heart
from data.phantom.canvas import Canvas
from data.phantom.shapes import Ellipse, bump, fourier, lookup, soft


class Torso:
    """Patient-level layout of the body around the heart, in mm in a frame centred on the mid LV.

    The frame is the image's: u to the right (posterior/left of the patient), v down (towards the feet).
    The chest wall is left of and above the heart, lungs above and right, abdomen below.
    """

    def __init__(self, rng: np.random.Generator, heart: "Heart", bmi: float):
        self.fat_t = float(np.clip(rng.uniform(8, 18) + 1.0 * (bmi - 22), 6, 40))
        self.mus_t = rng.uniform(7, 15)
        heart_r = heart.R + heart.W
        left = heart_r + heart.H + rng.uniform(0, 22) + self.mus_t + self.fat_t
        top = heart_r + rng.uniform(40, 110) + self.mus_t + self.fat_t
        right, bottom = rng.uniform(190, 300), rng.uniform(260, 380)
        self.body = Ellipse((0.5 * (right - left), 0.5 * (bottom - top)), 0.5 * (left + right),
                             0.5 * (top + bottom), math.radians(rng.uniform(-12, 8)),
                             fourier(rng, (0.04, 0.03, 0.02, 0.01)), rng.uniform(2.0, 3.2))
        self.fat_shape = fourier(rng, (0.35, 0.25, 0.15), k0=1) * (
            1 + rng.uniform(0.0, 0.8) * bump(rng.uniform(0.8, 1.1) * np.pi, rng.uniform(0.4, 0.8)))  # breast
        self.mus_shape = fourier(rng, (0.3, 0.2, 0.1), k0=1)
        # Diaphragm dome v = d0 + d1 u + d2 u^2 separates thorax (above) from abdomen (below);
        # relative to the heart it rises towards the apex.
        self.d0 = heart_r + rng.uniform(0, 22)
        self.d1 = rng.uniform(-0.7, -0.25)
        self.d2 = rng.uniform(0.0015, 0.004)  # a dome: highest to the right of the heart
        self.rise = rng.uniform(20, 55)
        self.liver_l0, self.liver_l1 = rng.uniform(-10, 50), rng.uniform(-0.5, 0.3)
        self.liver_edge = 25.0 * (fourier(rng, (0.6, 0.4, 0.3), k0=1) - 1.0)  # a lobulated edge (mm)
        # Abdominal organs as balls (u, v, zeta, radius) in 3D: each slice cuts them consistently.
        # The first two are the stomach and the spleen; the rest are bowel loops.
        # Loops are tubes: an in-plane radius and a longer extent along the slices.
        n = int(rng.integers(200, 260))
        self.organs = np.stack([rng.uniform(self.liver_l0 - 40, 230, n), self.d0 + rng.uniform(-50, 240, n),
                                rng.uniform(-30, heart.L + 40, n), rng.uniform(9, 24, n), rng.uniform(12, 45, n)],
                               axis=1)
        self.organs[0] = (rng.uniform(50, 100), self.d0 + rng.uniform(30, 70), heart.L * rng.uniform(0.3, 0.7),
                          rng.uniform(40, 55), 60.0)
        self.organs[1] = (rng.uniform(130, 180), self.d0 + rng.uniform(10, 60), heart.L * rng.uniform(0.0, 0.5),
                          rng.uniform(45, 60), 60.0)
        self.organ_texture = rng.uniform(0.03, 0.2, n)
        self.organ_level = rng.random(n)  # where in the style's organ range; most loops are darker
        self.organ_wall = rng.random(n) < 0.5  # dark wall (else a fat plane) against its neighbours
        spine_dir = math.radians(rng.uniform(-5, 35))
        self.spine_dir = np.array([math.cos(spine_dir), math.sin(spine_dir)])
        self.spine_inset = rng.uniform(25, 45)
        self.vert_r = rng.uniform(14, 19)
        self.aorta_r = rng.uniform(9, 13)
        self.aorta_off = rng.uniform(-25, 15)
        self.arm = rng.random() < 0.4
        self.arm_angle = math.radians(rng.uniform(-110, -60))
        self.n_lung_vessels = int(rng.integers(50, 110))
        # Posterior mediastinum beside the heart: fat with pulmonary veins / left atrium / oesophagus,
        # fading towards the apex. Lung vessels crowd around it (the hilum).
        ang = heart.septum + np.pi + math.radians(rng.uniform(-35, 35))  # behind the lateral wall
        self.hilum = (heart.R + heart.W + rng.uniform(10, 25)) * np.array([math.cos(ang), math.sin(ang)])
        self.hilum_r = rng.uniform(30, 45)
        self.hilum_vessels = [(rng.uniform(0, 2 * np.pi), rng.uniform(0, 1), rng.uniform(4, 12), rng.random() < 0.75)
                              for _ in range(int(rng.integers(1, 5)))]
        self.cartilage = rng.random() < 0.7


def render_torso(canvas: Canvas, torso: Torso, zeta: float, t: float, rng: np.random.Generator) -> None:
    """Everything but the heart: shared by ED and ES of the same slice (only the noise differs)."""
    u, v, px = canvas.u, canvas.v, canvas.px
    body = torso.body
    d_body = body.sd(u, v)
    canvas.paint(soft(d_body, px), "fat")
    # Skin fat of varying thickness, chest/abdominal wall muscle, then the cavity (fat where no organ
    # is painted; an intermittent thin fat line remains between the wall and the lung).
    theta = np.arctan2(v - body.c[1], u - body.c[0]) - body.rot
    fat_t = torso.fat_t * lookup(torso.fat_shape, theta) * (1 + 0.05 * canvas.coarse)
    d_mus = d_body + fat_t
    mus_t = torso.mus_t * lookup(torso.mus_shape, theta) * (1 + 0.05 * canvas.coarse)
    canvas.paint(soft(d_mus, px), "muscle")
    d_cav = d_mus + mus_t
    cavity = soft(d_cav, px)
    canvas.paint(cavity, "fat")
    # Ribs across the lateral/upper wall: dark cortex around grey marrow.
    for _ in range(int(rng.integers(2, 6))):
        ang = rng.uniform(1.05, 1.9) * np.pi + body.rot
        rr = 1 - (torso.fat_t + 0.5 * torso.mus_t) / min(body.a, body.b)
        c = (body.c[0] + rr * body.a * math.cos(ang), body.c[1] + rr * body.b * math.sin(ang))
        rib = Ellipse(c, rng.uniform(6, 11), rng.uniform(3.5, 5.5), ang + np.pi / 2)
        canvas.blob(rib.grown(1.2), "muscle", level=0.05 * canvas.tissue["blood"])
        canvas.blob(rib, "marrow")
    # Costal cartilages: a chain of grey ovals in the anterior chest wall.
    if torso.cartilage:
        a0 = rng.uniform(0.75, 0.95) * np.pi
        for i in range(int(rng.integers(3, 7))):
            ang = a0 + i * rng.uniform(0.12, 0.2) + body.rot
            rr = 1 - (torso.fat_t + 0.55 * torso.mus_t) / min(body.a, body.b)
            c = (body.c[0] + rr * body.a * math.cos(ang), body.c[1] + rr * body.b * math.sin(ang))
            rib = Ellipse(c, rng.uniform(5, 9), rng.uniform(3.5, 6), ang + np.pi / 2)
            canvas.blob(rib.grown(1.0), "muscle", level=0.08 * canvas.tissue["blood"])
            canvas.blob(rib, "marrow", level=rng.uniform(0.12, 0.3))
    # Thorax above the diaphragm: lungs (very dark, bright vessels); abdomen below it.
    d0 = torso.d0 - torso.rise * (t - 0.5)
    diaphragm = d0 + torso.d1 * u + torso.d2 * u * u + 3.0 * canvas.coarse
    d_dia = (v - diaphragm) / math.sqrt(1 + torso.d1 ** 2)
    thorax = soft(d_cav + 0.6 + np.clip(1.2 * canvas.coarse, 0, None), px) * soft(d_dia, px)
    abdomen = cavity * soft(-d_dia - 4.0, px)
    canvas.paint(thorax, "lung")
    canvas.paint(cavity * soft(np.abs(d_dia + 2.0) - 2.0, px), "muscle")  # the diaphragm itself
    # Liver on the left of the abdomen, with bright vessels.
    lb = torso.liver_l0 + torso.liver_l1 * (v - d0) + 10 * canvas.coarse + lookup(torso.liver_edge, v / 80.0)
    liver = abdomen * soft(u - lb, px)
    _abdomen(canvas, torso, abdomen * (1 - liver), zeta)
    canvas.paint(liver, "liver")
    for _ in range(int(rng.integers(8, 20))):
        c = (torso.liver_l0 - rng.uniform(-20, 130), d0 + rng.uniform(5, 200))
        r = rng.uniform(1.5, 5)
        canvas.blob(Ellipse(c, r * rng.uniform(1, 2.5), r, rng.uniform(0, np.pi)), "blood",
                    level=rng.uniform(0.5, 1.0) * canvas.tissue["blood"], clip=liver)
    # Mediastinum beside the heart base: a fat pad with round vessels (bright) or oesophagus (grey).
    fade = max(0.0, 1.0 - 2.2 * t)
    if fade > 0.05:
        hc = torso.hilum * (0.7 + 0.3 * fade)
        pad = Ellipse(tuple(hc), torso.hilum_r * (0.5 + 0.5 * fade), torso.hilum_r * (0.4 + 0.4 * fade),
                       rng.uniform(-0.5, 0.5), fourier(rng, (0.15, 0.1, 0.05)))
        canvas.blob(pad, "fat", clip=cavity)
        for ang, rr, r, bright in torso.hilum_vessels:
            c = (hc[0] + rr * 0.6 * pad.a * math.cos(ang), hc[1] + rr * 0.6 * pad.b * math.sin(ang))
            r = r * (0.5 + 0.5 * fade)
            e = Ellipse(c, r * rng.uniform(0.9, 1.3), r, rng.uniform(0, np.pi))
            if not bright:  # oesophagus / collapsed vessel: grey with a dark wall
                canvas.blob(e.grown(1.2), "muscle", level=0.1 * canvas.tissue["blood"], clip=cavity)
            canvas.blob(e, "blood" if bright else "muscle", clip=cavity)
    # Lung vessels: bright dots and short segments, crowded towards the hilum.
    inner = thorax * (d_dia < -3.0)
    for _ in range(torso.n_lung_vessels):
        c = tuple(torso.hilum + rng.normal(0, 70, 2)) if rng.random() < 0.6 else (rng.uniform(-120, 230),
                                                                                 rng.uniform(-200, d0))
        r = rng.uniform(0.6, 2.2)
        length = r if rng.random() < 0.85 else r * rng.uniform(1.5, 3.5)
        canvas.blob(Ellipse(c, length, r, rng.uniform(0, np.pi)), "blood",
                    level=rng.uniform(0.5, 1.0) * canvas.tissue["blood"], clip=inner)
    # Spine (vertebral body, cortex, paraspinal muscles) and the descending aorta in front of it.
    e1 = np.array([math.cos(body.rot), math.sin(body.rot)])
    e2 = np.array([-math.sin(body.rot), math.cos(body.rot)])
    reach = math.hypot(body.a * (torso.spine_dir @ e1), body.b * (torso.spine_dir @ e2))
    dist = reach + float(torso.spine_dir @ np.array(body.c)) - torso.fat_t - torso.spine_inset - torso.vert_r
    sc = torso.spine_dir * dist
    perp = np.array([-torso.spine_dir[1], torso.spine_dir[0]])
    for side in (-1, 1):
        pm = sc + torso.spine_dir * (torso.vert_r + 10) + side * perp * 24
        canvas.blob(Ellipse(tuple(pm), 22, 15, math.atan2(perp[1], perp[0])), "muscle", clip=cavity)
    vert = Ellipse(tuple(sc), torso.vert_r, torso.vert_r * 0.85, rng.uniform(0, np.pi), fourier(rng, (0.05,)))
    canvas.blob(vert.grown(2.0), "muscle", level=0.06 * canvas.tissue["blood"], clip=cavity)
    canvas.blob(vert, "marrow", clip=cavity)
    ac = sc - torso.spine_dir * (torso.vert_r + torso.aorta_r + 4) + perp * torso.aorta_off
    canvas.blob(Ellipse(tuple(ac), torso.aorta_r + 1.5, torso.aorta_r + 1.5), "muscle", clip=cavity)
    canvas.blob(Ellipse(tuple(ac), torso.aorta_r, torso.aorta_r * 0.95), "blood", clip=cavity)
    # An arm beside the chest (outside the body outline), often off-centre and banded.
    if torso.arm:
        ang = torso.arm_angle
        dirv = np.array([math.cos(ang), math.sin(ang)])
        reach = math.hypot(body.a * math.cos(ang - body.rot), body.b * math.sin(ang - body.rot))
        ac = np.array(body.c) + dirv * (reach + 55)
        arm = Ellipse(tuple(ac), 48, 40, ang, fourier(rng, (0.05, 0.03)))
        canvas.blob(arm, "fat")
        canvas.blob(arm.grown(-8), "muscle")
        canvas.blob(Ellipse(tuple(ac + dirv * 5), 11, 10), "muscle", level=0.05 * canvas.tissue["blood"])
        canvas.blob(Ellipse(tuple(ac + dirv * 5), 8, 7), "marrow")


def _abdomen(canvas: Canvas, torso: Torso, alpha: np.ndarray, zeta: float) -> None:
    """Stomach, spleen and bowel: the slice's cuts through the torso's organ tubes, packed as a warped
    power diagram (irregular rounded organs of their own brightness and texture), with fat between
    them and a dark wall or a thin fat plane where two touch."""
    near = np.nonzero(alpha > 0)
    organs = torso.organs
    weight = organs[:, 3] ** 2 * (1 - ((zeta - organs[:, 2]) / organs[:, 4]) ** 2)  # squared radius of each cut
    cut = np.nonzero(weight > 16.0)[0]
    if near[0].size == 0 or cut.size < 2:
        return
    seeds, weight = organs[cut, :2], weight[cut]
    warp = 9.0 * canvas.coarse[near], 9.0 * np.roll(canvas.coarse, (17, 23), axis=(0, 1))[near]
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
    level = lo + (hi - lo) * x ** 1.8  # most loops dark-grey, a few bright with fluid
    level[cut == 1] = canvas.tissue["spleen"]
    value = level[cell] * (1 + torso.organ_texture[cut][cell] * canvas.fine[near] + 0.12 * canvas.coarse[near])
    wall = np.where(torso.organ_wall[cut], 0.15 * canvas.tissue["blood"], canvas.tissue["fat"])
    value = value + soft(gap - 1.2, canvas.px) * (wall[cell] - value)
    # > 0: between organs, where fat shows (organs fill most of their cell: a little fat, not a sea).
    outside = np.sqrt(np.maximum(first + weight[cell], 0)) - np.sqrt(weight[cell]) - 5.0
    rim = soft(np.abs(outside + 1.0) - 0.8, canvas.px) * torso.organ_wall[cut][cell]
    value = value + rim * (0.15 * canvas.tissue["blood"] - value)  # bowel wall against the fat
    fat = canvas.value("fat", near)
    value = value + soft(-outside, canvas.px) * (fat - value)
    target = canvas.img[near]
    canvas.img[near] = target + alpha[near] * (value - target)
