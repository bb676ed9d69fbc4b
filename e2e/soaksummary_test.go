package e2e

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"strings"
	"time"
)

// soakSummary is TestSoak's summary.json.
type soakSummary struct {
	Seed      uint64  `json:"seed"`
	DurationS float64 `json:"duration_s"`
	VMs       int     `json:"vms"`
	IntervalS float64 `json:"interval_s"`
	// OnboardingS is when the last healthy VM had its first verdict.
	OnboardingS float64 `json:"onboarding_s"`
	Verdicts    int     `json:"verdicts"`
	// VerdictsPerS is the rate after onboarding; PerInterval the same
	// times the interval (the healthy fleet is attested once each).
	VerdictsPerS float64        `json:"verdicts_per_s"`
	PerInterval  float64        `json:"verdicts_per_interval"`
	Statuses     map[string]int `json:"verdicts_by_status"`
	// LatenessS is how much later than one interval after its previous
	// verdict each verdict came.
	LatenessS struct {
		P50 float64 `json:"p50"`
		P99 float64 `json:"p99"`
		Max float64 `json:"max"`
	} `json:"lateness_s"`
	// MaxGapS is the longest time a healthy VM went between verdicts.
	MaxGapS float64 `json:"max_gap_s"`
	// CPUS is each process's CPU (user + system) over the run; the
	// verifier's (the NATS nodes and the services, not the simulated
	// fleet nor the alert receiver) per verdict once onboarded is the
	// steady cost of an attestation.
	CPUS               map[string]float64    `json:"cpu_s"`
	VerifierCPUPerMS   float64               `json:"verifier_cpu_ms_per_verdict"`
	VerifierCPUPercent float64               `json:"verifier_cpu_percent"`
	Faults             []fault               `json:"faults"`
	RSSMiB             map[string]rssFigures `json:"rss_mib"`
	Alerts             int                   `json:"alerts_received"`
	AuditedEvents      uint64                `json:"audited_events"`
	AuditVerify        string                `json:"audit_verify"`
	Sim                summary               `json:"sim"`
	Checks             []soakCheck           `json:"checks"`
	Samples            []sample              `json:"samples"`
	healthy            map[string]bool       // VM keys attested and neither tampered nor deleted
	first, last        map[string]time.Time  // per VM: first and last verdict
	maxGap             map[string]time.Duration
	start, end         time.Time
	interval           time.Duration
}

// rssFigures are one process's RSS after warm-up (the median of the run's
// second quarter) and at the end (the median of its last quarter).
type rssFigures struct {
	WarmMiB float64 `json:"warm"`
	EndMiB  float64 `json:"end"`
	MaxMiB  float64 `json:"max"`
}

type soakCheck struct {
	Name     string   `json:"name"`
	OK       bool     `json:"ok"`
	Problems []string `json:"problems,omitempty"`
}

// sample is one 5-second window of the run.
type sample struct {
	AtS          float64            `json:"t_s"`
	Verdicts     int                `json:"verdicts"`
	LatenessP99S float64            `json:"lateness_p99_s"`
	LatenessMaxS float64            `json:"lateness_max_s"`
	RSSMiB       map[string]float64 `json:"rss_mib"`
	CPUS         map[string]float64 `json:"cpu_s"`
}

// summarize turns what the observer saw into the run's summary.
func (o *observer) summarize(sim summary, samples []sample, faults []fault, start time.Time, elapsed time.Duration) soakSummary {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := soakSummary{DurationS: elapsed.Seconds(), VMs: sim.VMs, IntervalS: o.interval.Seconds(), Verdicts: o.total,
		Statuses: maps.Clone(o.statuses), Faults: faults, Sim: sim, Samples: samples, healthy: map[string]bool{},
		first: maps.Clone(o.first), last: maps.Clone(o.last), maxGap: maps.Clone(o.maxGap),
		start: start, end: start.Add(elapsed), interval: o.interval}
	var onboarded time.Time
	for vm, first := range o.first {
		if sim.Tampered[vm] != "" || slices.Contains(sim.Deleted, vm) {
			continue
		}
		s.healthy[vm] = true
		if first.After(onboarded) {
			onboarded = first
		}
		s.MaxGapS = max(s.MaxGapS, o.maxGap[vm].Seconds())
	}
	s.OnboardingS = max(0, onboarded.Sub(start).Seconds())
	var after int
	for _, x := range samples {
		if x.AtS > s.OnboardingS {
			after += x.Verdicts
		}
	}
	if rest := s.DurationS - s.OnboardingS; rest > 0 {
		s.VerdictsPerS = float64(after) / rest
		s.PerInterval = s.VerdictsPerS * s.IntervalS
	}
	s.LatenessS.P50 = percentile(o.late, 0.5).Seconds()
	s.LatenessS.P99 = percentile(o.late, 0.99).Seconds()
	s.LatenessS.Max = percentile(o.late, 1).Seconds()
	s.RSSMiB = rssOf(samples, s.DurationS)
	s.steadyCPU()
	return s
}

// steadyCPU fills in the CPU figures from the samples: each process's
// total, and the verifier's per verdict and share of the machine from
// the first sample after onboarding to the last.
func (s *soakSummary) steadyCPU() {
	if len(s.Samples) == 0 {
		return
	}
	verifier := func(x sample) float64 {
		var sum float64
		for name, cpu := range x.CPUS {
			if name != "sim" && name != "receive" {
				sum += cpu
			}
		}
		return sum
	}
	last := s.Samples[len(s.Samples)-1]
	s.CPUS = last.CPUS
	from := slices.IndexFunc(s.Samples, func(x sample) bool { return x.AtS > s.OnboardingS })
	if from < 0 || from == len(s.Samples)-1 {
		return
	}
	first := s.Samples[from]
	var verdicts int
	for _, x := range s.Samples[from+1:] {
		verdicts += x.Verdicts
	}
	cpu := verifier(last) - verifier(first)
	if verdicts > 0 {
		s.VerifierCPUPerMS = cpu / float64(verdicts) * 1000
	}
	s.VerifierCPUPercent = cpu / (last.AtS - first.AtS) * 100
}

// afterFault reports whether t is within two intervals after a fault.
func (s *soakSummary) afterFault(t time.Time) bool {
	for _, f := range s.Faults {
		at := s.start.Add(time.Duration(f.AtS * float64(time.Second)))
		if !t.Before(at) && t.Sub(at) <= 2*s.interval+time.Duration(f.BackS*float64(time.Second)) {
			return true
		}
	}
	return false
}

// rssOf is each process's RSS after warm-up and at the end.
func rssOf(samples []sample, d float64) map[string]rssFigures {
	warm, end := map[string][]float64{}, map[string][]float64{}
	out := map[string]rssFigures{}
	for _, x := range samples {
		for name, v := range x.RSSMiB {
			switch {
			case x.AtS >= d/4 && x.AtS < d/2:
				warm[name] = append(warm[name], v)
			case x.AtS >= 3*d/4:
				end[name] = append(end[name], v)
			}
			f := out[name]
			f.MaxMiB = max(f.MaxMiB, v)
			out[name] = f
		}
	}
	for name, f := range out {
		f.WarmMiB, f.EndMiB = median(warm[name]), median(end[name])
		out[name] = f
	}
	return out
}

// gapProblems: every healthy VM attested, and none without a verdict for
// more than two intervals from its first verdict to the end.
func (s *soakSummary) gapProblems() []string {
	var problems []string
	want := s.VMs - len(s.Sim.Tampered) - len(s.Sim.Deleted)
	if len(s.healthy) != want {
		problems = append(problems, fmt.Sprintf("%d healthy VMs attested, want %d", len(s.healthy), want))
	}
	bound := 2 * s.interval
	for _, vm := range slices.Sorted(maps.Keys(s.healthy)) {
		if g := s.maxGap[vm]; g > bound {
			problems = append(problems, fmt.Sprintf("VM %s went %.1fs between verdicts", vm, g.Seconds()))
		}
		if g := s.end.Sub(s.last[vm]); g > bound {
			problems = append(problems, fmt.Sprintf("VM %s had no verdict in the last %.1fs", vm, g.Seconds()))
		}
	}
	return problems
}

// outcomeProblems: the simulator's view at the end.
func (s *soakSummary) outcomeProblems() []string {
	var problems []string
	for what, vms := range map[string][]string{
		"healthy VM not trusted": s.Sim.HealthyNotTrusted, "healthy VM revoked": s.Sim.HealthyRevoked,
		"tampered VM not revoked": s.Sim.TamperedNotRevoked, "deleted VM not revoked": s.Sim.DeletedNotRevoked,
	} {
		for _, vm := range vms {
			problems = append(problems, what+": "+vm)
		}
	}
	if len(s.Sim.Tampered) == 0 {
		problems = append(problems, "the tamper scenario spoiled no VM")
	}
	sort.Strings(problems)
	return problems
}

// memoryProblems: each of the processes named, unless a fault restarted
// it after warm-up began, ends within 25% + 32 MiB of its RSS after
// warm-up.
func (s *soakSummary) memoryProblems(names []string, restarted map[string]time.Time) []string {
	var problems []string
	warmFrom := s.start.Add(time.Duration(s.DurationS/4) * time.Second)
	for _, name := range names {
		if at, ok := restarted[name]; ok && at.After(warmFrom) {
			continue
		}
		f, ok := s.RSSMiB[name]
		if !ok || f.WarmMiB == 0 || f.EndMiB == 0 {
			continue
		}
		if f.EndMiB > 1.25*f.WarmMiB+32 {
			problems = append(problems, fmt.Sprintf("%s grew from %.0f MiB after warm-up to %.0f MiB at the end", name, f.WarmMiB, f.EndMiB))
		}
	}
	return problems
}

func (s *soakSummary) headline() string {
	return fmt.Sprintf("%d VMs at a %.0fs interval for %.0fs: onboarded in %.0fs, %d verdicts (%.1f/s, %.0f per interval), lateness p50 %.1fs p99 %.1fs max %.1fs, longest gap %.1fs, verifier CPU %.1f ms per verdict once onboarded (%.0f%% of one core), %d faults, %d alerts, %d audited events",
		s.VMs, s.IntervalS, s.DurationS, s.OnboardingS, s.Verdicts, s.VerdictsPerS, s.PerInterval,
		s.LatenessS.P50, s.LatenessS.P99, s.LatenessS.Max, s.MaxGapS, s.VerifierCPUPerMS, s.VerifierCPUPercent, len(s.Faults), s.Alerts, s.AuditedEvents)
}

func percentile(xs []time.Duration, q float64) time.Duration {
	if len(xs) == 0 {
		return 0
	}
	c := slices.Clone(xs)
	slices.Sort(c)
	return c[max(0, min(len(c)-1, int(math.Ceil(q*float64(len(c))))-1))]
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	c := slices.Clone(xs)
	slices.Sort(c)
	return c[len(c)/2]
}

// plotSoak draws the run as SVG: verdicts/s, lateness and RSS over time,
// each fault a dashed line.
func plotSoak(s *soakSummary) []byte {
	const w, ph, left, top = 960.0, 200.0, 70.0, 30.0
	panels := []struct {
		title  string
		series map[string][]float64
	}{
		{"verdicts per second", map[string][]float64{"verdicts/s": nil}},
		{"lateness (s)", map[string][]float64{"p99": nil, "max": nil}},
		{"RSS (MiB)", map[string][]float64{}},
	}
	var ts []float64
	for _, x := range s.Samples {
		ts = append(ts, x.AtS)
		panels[0].series["verdicts/s"] = append(panels[0].series["verdicts/s"], float64(x.Verdicts)/5)
		panels[1].series["p99"] = append(panels[1].series["p99"], x.LatenessP99S)
		panels[1].series["max"] = append(panels[1].series["max"], x.LatenessMaxS)
	}
	for name := range s.RSSMiB {
		var ys []float64
		for _, x := range s.Samples {
			ys = append(ys, x.RSSMiB[name]) // 0 while a killed process was down
		}
		panels[2].series[name] = ys
	}
	tmax := max(s.DurationS, 1)
	var b strings.Builder
	height := top + float64(len(panels))*(ph+60)
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="11">`+"\n", w+220, height)
	fmt.Fprintf(&b, `<text x="%.0f" y="18" font-size="14">Vigil soak: %s</text>`+"\n", left, escapeXML(fmt.Sprintf("%d VMs, %.0fs interval, %.0f s, %d faults", s.VMs, s.IntervalS, s.DurationS, len(s.Faults))))
	colors := []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd"}
	for i, p := range panels {
		y0 := top + float64(i)*(ph+60) + 20
		ymax := 0.0
		for _, ys := range p.series {
			for _, y := range ys {
				ymax = max(ymax, y)
			}
		}
		ymax = max(ymax*1.1, 1e-9)
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" font-size="12">%s</text>`+"\n", left, y0-6, escapeXML(p.title))
		fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="none" stroke="#999"/>`+"\n", left, y0, w-left, ph)
		for k := 0; k <= 4; k++ {
			y := y0 + ph - ph*float64(k)/4
			fmt.Fprintf(&b, `<text x="%.0f" y="%.1f" text-anchor="end">%.3g</text>`+"\n", left-4, y+4, ymax*float64(k)/4)
		}
		for k := 0; k <= 6; k++ {
			x := left + (w-left)*float64(k)/6
			fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" text-anchor="middle">%.0fs</text>`+"\n", x, y0+ph+14, tmax*float64(k)/6)
		}
		for _, f := range s.Faults {
			x := left + (w-left)*f.AtS/tmax
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="#aaa" stroke-dasharray="4 3"><title>%s</title></line>`+"\n",
				x, y0, x, y0+ph, escapeXML(f.Kind+" "+f.Target))
		}
		for j, name := range slices.Sorted(maps.Keys(p.series)) {
			ys := p.series[name]
			var pts []string
			for k, y := range ys {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", left+(w-left)*ts[k]/tmax, y0+ph-ph*y/ymax))
			}
			c := colors[j%len(colors)]
			fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.3" points="%s"/>`+"\n", c, strings.Join(pts, " "))
			fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" fill="%s">%s</text>`+"\n", w+10, y0+12+float64(j)*13, c, escapeXML(name))
		}
	}
	b.WriteString("</svg>\n")
	return []byte(b.String())
}

func escapeXML(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;").Replace(s)
}
