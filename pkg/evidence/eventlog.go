package evidence

import (
	"slices"

	"github.com/vigil-cc/vigil/pkg/evidence/eventlog"
)

// EventLogClaims are facts from an event log that replayed to the quoted PCRs.
type EventLogClaims struct {
	Events int `json:"events"`
	// PCRs are the PCR indexes the log extends.
	PCRs []int `json:"pcrs"`
	// SecureBoot is the measured SecureBoot variable; SecureBootMeasured
	// says whether the log measured it at all.
	SecureBoot         bool `json:"secure_boot"`
	SecureBootMeasured bool `json:"secure_boot_measured"`
}

func (v *Verifier) verifyEventLog(res *Result, b *Bundle) {
	if res.PCRBank != "sha256" {
		res.fail(ReasonEventLogInvalid, "event log replay needs the sha256 PCR bank, quote is %s", res.PCRBank)
		return
	}
	log, err := eventlog.Parse(b.EventLog)
	if err != nil {
		res.fail(ReasonEventLogInvalid, "%v", err)
		return
	}
	if err := log.Check(res.PCRs); err != nil {
		res.fail(ReasonEventLogPCRMismatch, "%v", err)
		return
	}
	sb, measured, err := log.SecureBoot()
	if err != nil {
		res.fail(ReasonEventLogInvalid, "%v", err)
		return
	}
	c := &EventLogClaims{Events: len(log.Events), SecureBoot: sb, SecureBootMeasured: measured}
	for i := range log.Replay() {
		c.PCRs = append(c.PCRs, i)
	}
	slices.Sort(c.PCRs)
	res.EventLog = c
}
