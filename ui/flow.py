"""The distillation flow diagram, shared by the Learn page (the idea) and the Distill page (a live run)."""

import plotly.graph_objects as go

# Okabe-Ito: colour-blind safe and readable on light and dark backgrounds
BLUE, ORANGE, GREEN, VERMILLION, SKY, PURPLE, GREY = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#D55E00",
    "#56B4E9",
    "#CC79A7",
    "#8C8C8C",
)
FONT = 16  # readable on a projector


def distillation_flow(active: tuple[str, ...] = ()) -> go.Figure:
    """Distillation as a flow: teacher soft labels + hard labels -> train student -> evaluate -> deploy /
    iterate.

    Boxes named in `active` (soft, hard, train, eval, ok, deploy, iterate) are drawn bold: the stage a run
    is in, or its outcome (deploy, or iterate when the student is not good enough)."""
    # opaque pale fills with dark text: readable on a light and on a dark page
    boxes = {  # name: (x centre, y centre, text, edge colour, fill)
        "soft": (1.2, 3.0, "<b>Soft labels</b><br>teacher's probabilities<br>for every word", SKY, "#DDEFFB"),
        "hard": (
            1.2,
            1.0,
            "<b>Hard labels</b><br>the correct transcript<br>(one answer, 100%)",
            BLUE,
            "#D9E8F5",
        ),
        "train": (
            4.3,
            2.0,
            "<b>Train the student</b><br>a smaller model learns<br>to match both",
            ORANGE,
            "#FBEBC8",
        ),
        "eval": (7.2, 2.0, "<b>Evaluate</b><br>WER, size, latency<br>on held-out audio", GREEN, "#D2EFE6"),
        "ok": (9.9, 2.0, "<b>Good<br>enough?</b>", PURPLE, "#F4DDEA"),
        "deploy": (12.4, 2.0, "<b>Deploy</b><br>the student", GREEN, "#D2EFE6"),
    }
    w, h = 1.15, 0.62
    fig = go.Figure()
    for key, (x, y, text, colour, fill) in boxes.items():
        line = {"color": colour, "width": 7 if key in active else 3}
        if key in active:
            fill = colour
        if key == "ok":  # a decision: a diamond
            fig.add_shape(
                type="path",
                path=f"M {x - 1.0} {y} L {x} {y + 0.8} L {x + 1.0} {y} L {x} {y - 0.8} Z",
                fillcolor=fill,
                line=line,
            )
        else:
            fig.add_shape(type="rect", x0=x - w, x1=x + w, y0=y - h, y1=y + h, fillcolor=fill, line=line)
        fig.add_annotation(
            x=x,
            y=y,
            text=text,
            showarrow=False,
            font={"size": FONT - 1, "color": "#FFFFFF" if key in active else "#1A1A1A"},
        )

    def arrow(x0, y0, x1, y1, label="", colour=GREY, label_y=0.32):
        fig.add_annotation(
            x=x1,
            y=y1,
            ax=x0,
            ay=y0,
            xref="x",
            yref="y",
            axref="x",
            ayref="y",
            text="",
            showarrow=True,
            arrowhead=3,
            arrowsize=1.4,
            arrowwidth=2.5,
            arrowcolor=colour,
        )
        if label:
            fig.add_annotation(
                x=(x0 + x1) / 2,
                y=(y0 + y1) / 2 + label_y,
                text=label,
                showarrow=False,
                font={"size": FONT - 1, "color": colour},
            )

    arrow(1.2 + w, 3.0, 4.3 - w, 2.25)
    arrow(1.2 + w, 1.0, 4.3 - w, 1.75)
    arrow(4.3 + w, 2.0, 7.2 - w, 2.0)
    arrow(7.2 + w, 2.0, 9.9 - 1.0, 2.0)
    arrow(9.9 + 1.0, 2.0, 12.4 - w, 2.0, "yes", GREEN)
    # no: iterate, a loop under the boxes back to training through the "iterate" node
    iterating = "iterate" in active
    loop = {"color": VERMILLION, "width": 5 if iterating else 2.5}
    fig.add_shape(type="path", path=f"M 9.9 {2.0 - 0.8} L 9.9 0.05 L 4.3 0.05", line=loop)
    arrow(4.3, 0.05, 4.3, 2.0 - h, colour=VERMILLION)
    fig.add_annotation(
        x=9.9, y=0.62, text="no", showarrow=False, xshift=18, font={"size": FONT - 1, "color": VERMILLION}
    )
    fig.add_shape(
        type="rect",
        x0=4.8,
        x1=9.4,
        y0=0.05 - 0.3,
        y1=0.05 + 0.3,
        fillcolor=VERMILLION if iterating else "#F9E0D0",
        line={"color": VERMILLION, "width": 7 if iterating else 3},
    )
    fig.add_annotation(
        x=7.1,
        y=0.05,
        showarrow=False,
        font={"size": FONT - 1, "color": "#FFFFFF" if iterating else "#1A1A1A"},
        text="<b>Iterate</b>: more steps, layers or audio",
    )
    fig.update_xaxes(visible=False, range=[-0.1, 13.7], fixedrange=True)
    fig.update_yaxes(visible=False, range=[-0.3, 3.8], fixedrange=True)
    fig.update_layout(
        height=360, showlegend=False, margin={"l": 0, "r": 0, "t": 10, "b": 0}, font={"size": FONT}
    )
    return fig
