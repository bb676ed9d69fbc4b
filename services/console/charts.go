package console

import (
	"fmt"
	"strconv"
)

// Chart is an SVG bar chart, drawn by the templates from its geometry.
type Chart struct {
	Title         string
	Width, Height int
	Bars          []Bar
	Labels        []Label
	Legend        []LegendItem
}

// Bar is one rectangle of a chart.
type Bar struct {
	X, Y, W, H int
	Class      string
	Tip        string
}

// Label is a text of a chart.
type Label struct {
	X, Y   int
	Text   string
	Anchor string
}

// LegendItem names a colour.
type LegendItem struct {
	Class, Text string
}

// verdictsChart stacks each minute's verdicts by status.
func verdictsChart(ms []MinuteCounts) Chart {
	const w, h, top, bottom = 720, 160, 10, 20
	c := Chart{Title: "Verdicts per minute, last hour", Width: w, Height: h}
	peak := 1
	for _, m := range ms {
		peak = max(peak, m.N[0]+m.N[1]+m.N[2]+m.N[3])
	}
	plot := h - top - bottom
	step := w / max(len(ms), 1)
	for i, m := range ms {
		y := h - bottom
		for s, n := range m.N {
			if n == 0 {
				continue
			}
			bh := max(n*plot/peak, 1)
			y -= bh
			c.Bars = append(c.Bars, Bar{X: i*step + 1, Y: y, W: step - 2, H: bh, Class: "v-" + verdictStatuses[s],
				Tip: fmt.Sprintf("%s: %d %s", m.Start.UTC().Format("15:04"), n, verdictStatuses[s])})
		}
	}
	if len(ms) > 0 {
		c.Labels = append(c.Labels,
			Label{X: 0, Y: h - 4, Text: ms[0].Start.UTC().Format("15:04"), Anchor: "start"},
			Label{X: w, Y: h - 4, Text: ms[len(ms)-1].Start.UTC().Format("15:04") + " UTC", Anchor: "end"},
			Label{X: 0, Y: top + 2, Text: "max " + strconv.Itoa(peak) + "/min", Anchor: "start"})
	}
	for _, s := range verdictStatuses {
		c.Legend = append(c.Legend, LegendItem{Class: "v-" + s, Text: s})
	}
	return c
}

// sinceChart is the histogram of time since the last successful
// attestation.
func sinceChart(cs []Count) Chart {
	const w, h, top, bottom = 420, 160, 16, 20
	c := Chart{Title: "Time since last successful attestation", Width: w, Height: h}
	peak := 1
	for _, b := range cs {
		peak = max(peak, b.N)
	}
	plot := h - top - bottom
	step := w / max(len(cs), 1)
	for i, b := range cs {
		bh := 0
		if b.N > 0 {
			bh = max(b.N*plot/peak, 1)
		}
		class := "s-recent"
		switch {
		case b.Label == "never":
			class = "s-never"
		case i >= 3:
			class = "s-old"
		}
		x := i*step + 4
		c.Bars = append(c.Bars, Bar{X: x, Y: h - bottom - bh, W: step - 8, H: bh, Class: class, Tip: fmt.Sprintf("%s: %d VMs", b.Label, b.N)})
		c.Labels = append(c.Labels,
			Label{X: x + (step-8)/2, Y: h - 5, Text: b.Label, Anchor: "middle"},
			Label{X: x + (step-8)/2, Y: h - bottom - bh - 3, Text: strconv.Itoa(b.N), Anchor: "middle"})
	}
	return c
}
