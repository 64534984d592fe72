"""Draws docs/_static/resblockconv_backward.svg (python docs/make_diagram.py): the
ResBlockConv forward and backward of the student's page, boxes and arrows by hand,
no drawing tool, so the picture needs no script in the browser."""
import os
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_static", "resblockconv_backward.svg")
W, H = 1000, 440
xs = {"X": 40, "conv1": 160, "bn1": 272, "relu1": 384, "conv2": 496, "bn2": 608, "plus": 720, "relu2": 832, "Y": 960}
FY, BY = 120, 300
bw, bh = 72, 38
red, blue = "#c0392b", "#2c6fb7"
out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
       'font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" font-size="13">',
       '<title>ResBlockConv: forward (top) and backward (bottom); the gradient forks at the addition</title>',
       '<defs><marker id="a" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
       '<path d="M0,0 L10,5 L0,10 z" fill="#2c6fb7"/></marker>'
       '<marker id="r" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
       '<path d="M0,0 L10,5 L0,10 z" fill="#c0392b"/></marker></defs>',
       f'<rect width="{W}" height="{H}" fill="white"/>']
def box(x, y, label, fill, stroke, sub=None):
    out.append(f'<rect x="{x-bw/2}" y="{y-bh/2}" width="{bw}" height="{bh}" rx="6" fill="{fill}" stroke="{stroke}" stroke-width="1.5"/>')
    out.append(f'<text x="{x}" y="{y+4 if not sub else y-2}" text-anchor="middle">{label}</text>')
    if sub:
        out.append(f'<text x="{x}" y="{y+12}" text-anchor="middle" font-size="10" fill="#555">{sub}</text>')
def plain(x, y, label, color="#222"):
    out.append(f'<text x="{x}" y="{y+5}" text-anchor="middle" font-size="15" font-weight="bold" fill="{color}">{label}</text>')
def circle(x, y, label, stroke):
    out.append(f'<circle cx="{x}" cy="{y}" r="17" fill="white" stroke="{stroke}" stroke-width="2"/>')
    out.append(f'<text x="{x}" y="{y+6}" text-anchor="middle" font-size="18" fill="{stroke}">{label}</text>')
def arrow(x1, y1, x2, y2, color, marker, label=None):
    out.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{color}" stroke-width="1.6" marker-end="url(#{marker})"/>')
    if label:
        ly = y1 + 17 if len(label) > 4 else y1 - 8
        out.append(f'<text x="{(x1+x2)/2}" y="{ly}" text-anchor="middle" font-size="11" fill="{color}">{label}</text>')
out.append(f'<text x="12" y="22" font-size="14" font-weight="bold" fill="{blue}">forward: Y = relu(bn2(conv2(relu(bn1(conv1(X))))) + X)</text>')
out.append(f'<text x="12" y="{BY-62}" font-size="14" font-weight="bold" fill="{red}">backward: ResBlockConv.backward(dY), right to left</text>')
fw = dict(fill="#e8f1fb", stroke=blue)
plain(xs["X"], FY, "X")
box(xs["conv1"], FY, "conv1", **fw); box(xs["bn1"], FY, "bn1", **fw); box(xs["relu1"], FY, "relu", **fw, sub="call 1")
box(xs["conv2"], FY, "conv2", **fw); box(xs["bn2"], FY, "bn2", **fw)
circle(xs["plus"], FY, "+", blue); box(xs["relu2"], FY, "relu", **fw, sub="call 2"); plain(xs["Y"], FY, "Y")
seq = ["X", "conv1", "bn1", "relu1", "conv2", "bn2", "plus", "relu2", "Y"]
names = ["X", "Z1", "A1", "H", "Z2", "Y1", "Y2", "Y"]
def half(n, back=False):
    if back and n == "plus":
        return 8
    return 12 if n in ("X", "Y") else 17 if n == "plus" else bw / 2
for i in range(len(seq) - 1):
    a, b = seq[i], seq[i + 1]
    arrow(xs[a] + half(a), FY, xs[b] - half(b), FY, blue, "a", names[i] if i else None)
out.append(f'<path d="M {xs["X"]} {FY-14} C {xs["X"]} {FY-70}, {xs["plus"]} {FY-70}, {xs["plus"]} {FY-19}" fill="none" stroke="{blue}" stroke-width="2" marker-end="url(#a)"/>')
out.append(f'<text x="{(xs["X"]+xs["plus"])/2}" y="{FY-64}" text-anchor="middle" font-size="12" fill="{blue}">skip connection: X, unchanged</text>')
bwd = dict(fill="#fdecea", stroke=red)
plain(xs["Y"], BY, "dY", red)
box(xs["relu2"], BY, "relu", **bwd, sub="backward 2")
out.append(f'<circle cx="{xs["plus"]}" cy="{BY}" r="7" fill="{red}"/>'); out.append(f'<text x="{xs["plus"]}" y="{BY-16}" text-anchor="middle" font-size="12" font-weight="bold" fill="{red}">fork</text>')
box(xs["bn2"], BY, "bn2", **bwd, sub=".backward"); box(xs["conv2"], BY, "conv2", **bwd, sub=".backward")
box(xs["relu1"], BY, "relu", **bwd, sub="backward 1"); box(xs["bn1"], BY, "bn1", **bwd, sub=".backward")
box(xs["conv1"], BY, "conv1", **bwd, sub=".backward")
circle(xs["X"], BY, "+", red)
rseq = ["Y", "relu2", "plus", "bn2", "conv2", "relu1", "bn1", "conv1", "X"]
grads = ["dY", "dY2", "dY1", "dZ2", "dH", "dA1", "dZ1", "dX_residual"]
for i in range(len(rseq) - 1):
    a, b = rseq[i], rseq[i + 1]
    arrow(xs[a] - half(a, True), BY, xs[b] + half(b, True), BY, red, "r", grads[i] if i else None)
out.append(f'<text x="{xs["relu2"]+40}" y="{BY+40}" text-anchor="middle" font-size="11" fill="{red}">dY2 = dY · 1{{Y2 &gt; 0}}</text>')
out.append(f'<path d="M {xs["plus"]} {BY+8} C {xs["plus"]} {BY+90}, {xs["X"]} {BY+90}, {xs["X"]} {BY+19}" fill="none" stroke="{red}" stroke-width="2" marker-end="url(#r)"/>')
out.append(f'<text x="{(xs["X"]+xs["plus"])/2}" y="{BY+94}" text-anchor="middle" font-size="12" fill="{red}">dX_skip = dY2: the skip hands it back unchanged</text>')
out.append(f'<text x="{xs["X"]}" y="{BY-28}" text-anchor="middle" font-size="14" font-weight="bold" fill="{red}">dX</text>')
out.append(f'<text x="12" y="{BY+118}" font-size="12" fill="#222">dX = dX_residual + dX_skip: the fork at the addition copies dY2 into both paths,</text>')
out.append(f'<text x="12" y="{BY+134}" font-size="12" fill="#222">and their gradients add where X fed both.  Dotted lines: the backward call that undoes each forward call.</text>')
for n in ["conv1", "bn1", "relu1", "conv2", "bn2", "relu2"]:
    out.append(f'<line x1="{xs[n]}" y1="{FY+bh/2+3}" x2="{xs[n]}" y2="{BY-bh/2-3}" stroke="#aaa" stroke-dasharray="3,4"/>')
out.append(f'<line x1="{xs["plus"]}" y1="{FY+20}" x2="{xs["plus"]}" y2="{BY-30}" stroke="#aaa" stroke-dasharray="3,4"/>')
out.append('</svg>')
open(OUT, "w").write("\n".join(out) + "\n")
