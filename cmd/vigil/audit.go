package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"golang.org/x/mod/sumdb/note"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/auditor/auditlog"
)

func newAuditCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Check the tamper-evident audit log offline",
		Long: "The auditor writes every Vigil event into a transparency log (C2SP tlog-tiles) with Ed25519\n" +
			"signed checkpoints. These commands need only a copy of the log directory and the public key:\n" +
			"they verify the whole log, prove and check the inclusion of single entries, and list a VM's history.",
	}
	cmd.AddCommand(newAuditKeygenCmd(), newAuditVerifyCmd(), newAuditProveCmd(), newAuditCheckProofCmd(), newAuditSearchCmd())
	return cmd
}

func usageErr(format string, args ...any) error {
	return &exitError{code: 2, msg: fmt.Sprintf(format, args...)}
}

// failed reports a verification failure (exit 1).
func failed(err error) error { return &exitError{code: 1, msg: err.Error()} }

func loadVerifier(path string) (note.Verifier, error) {
	if path == "" {
		return nil, nil
	}
	v, err := auditlog.LoadVerifier(path)
	if err != nil {
		return nil, usageErr("--key: %v", err)
	}
	return v, nil
}

func openLog(dir string) (*auditlog.Dir, error) {
	if dir == "" {
		return nil, usageErr("--log is required")
	}
	d, err := auditlog.OpenDir(dir)
	if err != nil {
		return nil, usageErr("--log: %v", err)
	}
	return d, nil
}

func newAuditKeygenCmd() *cobra.Command {
	var signer, pub, origin string
	cmd := &cobra.Command{
		Use:   "keygen",
		Short: "Create the Ed25519 key pair that signs the log's checkpoints",
		Long: "Writes a C2SP signed-note signer key (mode 0600) and its verifier key. The key name is the log's\n" +
			"checkpoint origin. Give the verifier key (the .pub file) to whoever checks the log.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if strings.ContainsAny(origin, "+ \t\n") || origin == "" {
				return usageErr("--origin %q: must be non-empty without '+' or spaces", origin)
			}
			if err := auditlog.GenerateKeyFiles(signer, pub, origin); err != nil {
				return err
			}
			v, err := os.ReadFile(pub)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "signer key: %s\nverifier key: %s\n%s", signer, pub, v)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&signer, "signer", "signer.key", "signer (private) key file to create")
	f.StringVar(&pub, "pub", "signer.pub", "verifier (public) key file to create")
	f.StringVar(&origin, "origin", auditlog.DefaultOrigin, "key name: the log's checkpoint origin")
	return cmd
}

func newAuditVerifyCmd() *cobra.Command {
	var dir, key string
	var trusted []string
	var asJSON, allowGaps bool
	cmd := &cobra.Command{
		Use:   "verify --log DIR --key PUB [--trusted CHECKPOINT]... [--allow-gaps]",
		Short: "Verify the whole log against its signed checkpoint and earlier trusted checkpoints",
		Long: "Checks the checkpoint's signature, recomputes the Merkle tree from every entry and compares it with\n" +
			"every tile and the checkpoint's root (a changed, missing or truncated file fails), checks that the\n" +
			"entries account for the stream's sequences 1..N each exactly once, and that the log is consistent\n" +
			"with each --trusted checkpoint saved earlier (a fork or a rollback fails). Exit 1 on any failure.\n" +
			"Gap entries (events that left the stream before the auditor logged them) are listed and fail\n" +
			"verification too, unless --allow-gaps accepts them.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := openLog(dir)
			if err != nil {
				return err
			}
			if key == "" {
				return usageErr("--key is required")
			}
			v, err := loadVerifier(key)
			if err != nil {
				return err
			}
			var opts auditlog.VerifyOptions
			for _, t := range trusted {
				b, err := os.ReadFile(t)
				if err != nil {
					return usageErr("--trusted: %v", err)
				}
				opts.Trusted = append(opts.Trusted, b)
			}
			rep, err := auditlog.Verify(cmd.Context(), d, v, opts)
			if err != nil {
				return failed(err)
			}
			var gapErr error
			if rep.Gaps > 0 {
				gapErr = gapsError(cmd.Context(), d, rep)
			}
			switch {
			case asJSON:
				if err := json.NewEncoder(cmd.OutOrStdout()).Encode(rep); err != nil {
					return err
				}
			case gapErr != nil && !allowGaps:
				fmt.Fprintln(cmd.OutOrStdout(), "GAPS:", rep)
			default:
				fmt.Fprintln(cmd.OutOrStdout(), "OK:", rep)
			}
			if gapErr != nil {
				if !allowGaps {
					return failed(fmt.Errorf("%w; pass --allow-gaps to accept them", gapErr))
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "WARNING: %v (accepted: --allow-gaps)\n", gapErr)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "log", "", "log directory (or a copy of it)")
	f.StringVar(&key, "key", "", "the log's verifier (public) key file")
	f.StringArrayVar(&trusted, "trusted", nil, "an earlier checkpoint file the log must be consistent with (repeatable)")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	f.BoolVar(&allowGaps, "allow-gaps", false, "accept gap entries (events that left the stream before they were logged)")
	return cmd
}

// maxGapsListed bounds the gap entries named in verify's error.
const maxGapsListed = 10

// gapsError describes the gap entries of a verified log: how many, and the
// first few with their sequences and entry indexes.
func gapsError(ctx context.Context, d *auditlog.Dir, rep *auditlog.Report) error {
	var list []string
	isGap := func(r *auditlog.Record) bool { return r.Kind == auditlog.KindGap }
	// The log was verified; this pass only names the gaps.
	_, err := auditlog.Search(ctx, d, nil, isGap, func(index uint64, r *auditlog.Record) error {
		if len(list) < maxGapsListed {
			list = append(list, fmt.Sprintf("%d..%d (entry %d)", r.FirstSeq, r.Seq, index))
		}
		return nil
	})
	switch {
	case err != nil:
		list = []string{fmt.Sprintf("(cannot list them: %v)", err)}
	case rep.Gaps > uint64(len(list)):
		list = append(list, fmt.Sprintf("and %d more", rep.Gaps-uint64(len(list))))
	}
	return fmt.Errorf("the log has %d gap entries: %d %s sequences left the stream before the auditor logged them (deleted, purged, expired or dropped by a limit): %s",
		rep.Gaps, rep.MissingSeqs, rep.Stream, strings.Join(list, ", "))
}

func newAuditProveCmd() *cobra.Command {
	var dir, key, out string
	var index int64
	cmd := &cobra.Command{
		Use:   "prove --log DIR --index N [--out FILE]",
		Short: "Write a C2SP tlog-proof that entry N is in the log",
		Long: "Builds an inclusion proof for entry N against the log's latest checkpoint, in the C2SP tlog-proof\n" +
			"format, carrying the entry itself as extra data so the proof is self-contained. With --key the\n" +
			"checkpoint's signature is checked first.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := openLog(dir)
			if err != nil {
				return err
			}
			if index < 0 {
				return usageErr("--index is required and must not be negative")
			}
			v, err := loadVerifier(key)
			if err != nil {
				return err
			}
			p, err := auditlog.Prove(cmd.Context(), d, uint64(index), v)
			if err != nil {
				if errors.Is(err, auditlog.ErrTampered) {
					return failed(err)
				}
				return err
			}
			if out == "" || out == "-" {
				_, err := cmd.OutOrStdout().Write(p.Marshal())
				return err
			}
			if err := os.WriteFile(out, p.Marshal(), 0o644); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "wrote proof for entry %d to %s\n", index, out)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "log", "", "log directory")
	f.Int64Var(&index, "index", -1, "entry index (0-based, as listed by search)")
	f.StringVar(&key, "key", "", "verifier key file: check the checkpoint before proving")
	f.StringVar(&out, "out", "", "proof file to write (default stdout; convention: .tlog-proof)")
	return cmd
}

func newAuditCheckProofCmd() *cobra.Command {
	var proofFile, key, entryFile string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "check-proof --proof FILE --key PUB [--entry FILE]",
		Short: "Verify a C2SP tlog-proof with the log's public key",
		Long: "Checks the proof's checkpoint signature and that the entry (from --entry, else the proof's extra\n" +
			"data) is included at the proof's index. Prints the entry. Exit 1 if the proof does not verify.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if proofFile == "" {
				return usageErr("--proof is required")
			}
			if key == "" {
				return usageErr("--key is required")
			}
			v, err := loadVerifier(key)
			if err != nil {
				return err
			}
			raw, err := readFileOrStdin(cmd, proofFile)
			if err != nil {
				return usageErr("--proof: %v", err)
			}
			p, err := auditlog.ParseProof(raw)
			if err != nil {
				return failed(err)
			}
			var entry []byte
			if entryFile != "" {
				if entry, err = os.ReadFile(entryFile); err != nil {
					return usageErr("--entry: %v", err)
				}
			}
			cp, err := auditlog.CheckProof(p, v, entry)
			if err != nil {
				return failed(err)
			}
			if entry == nil {
				entry = p.Extra
			}
			w := cmd.OutOrStdout()
			if asJSON {
				return json.NewEncoder(w).Encode(map[string]any{"index": p.Index, "origin": cp.Origin, "size": cp.Size, "entry": json.RawMessage(entry)})
			}
			fmt.Fprintf(w, "OK: entry %d is in log %s (checkpoint size %d)\n", p.Index, cp.Origin, cp.Size)
			if r, err := auditlog.ParseRecord(entry); err == nil {
				fmt.Fprintf(w, "%s\n", describe(&r))
			}
			fmt.Fprintf(w, "%s\n", entry)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&proofFile, "proof", "", "proof file (- for stdin)")
	f.StringVar(&key, "key", "", "the log's verifier (public) key file")
	f.StringVar(&entryFile, "entry", "", "the entry to check (default: the one the proof carries)")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

func readFileOrStdin(cmd *cobra.Command, path string) ([]byte, error) {
	if path == "-" {
		return io.ReadAll(io.LimitReader(cmd.InOrStdin(), 1<<20))
	}
	return os.ReadFile(path)
}

func newAuditSearchCmd() *cobra.Command {
	var dir, key, vm, typ string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "search --log DIR --vm VM [--key PUB]",
		Short: "List a VM's history from the log",
		Long: "Lists every entry about a VM (its VM key, or its ARM resource ID) in log order. With --key the\n" +
			"checkpoint's signature and the root recomputed from all entries are verified, so what is listed\n" +
			"is what the signed log commits to; without it nothing is verified (a warning says so).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := openLog(dir)
			if err != nil {
				return err
			}
			v, err := loadVerifier(key)
			if err != nil {
				return err
			}
			want := strings.TrimSpace(vm)
			if want != "" && !events.ValidVMKey(want) {
				if !strings.HasPrefix(want, "/") {
					return usageErr("--vm %q: neither a VM key nor an ARM resource ID", vm)
				}
				want = events.VMKey(want)
			}
			match := func(r *auditlog.Record) bool {
				if want != "" && r.VMKey() != want {
					return false
				}
				if typ == "" {
					return true
				}
				if r.Kind != auditlog.KindEvent {
					return r.Kind == typ
				}
				e, err := r.Envelope()
				return err == nil && (e.Type == typ || strings.Contains(e.Type, "."+typ+"."))
			}
			w := cmd.OutOrStdout()
			tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
			if !asJSON {
				fmt.Fprintln(tw, "INDEX\tSEQ\tSTORED\tTYPE\tSUMMARY")
			}
			enc := json.NewEncoder(w)
			n := 0
			res, err := auditlog.Search(cmd.Context(), d, v, match, func(index uint64, r *auditlog.Record) error {
				n++
				if asJSON {
					return enc.Encode(struct {
						Index  uint64           `json:"index"`
						Record *auditlog.Record `json:"record"`
					}{index, r})
				}
				typ := r.Kind
				if e, err := r.Envelope(); err == nil {
					typ = e.Type
				}
				fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\n", index, r.Seq, r.Stored, typ, summary(r))
				return nil
			})
			if !asJSON {
				tw.Flush()
			}
			if err != nil {
				if errors.Is(err, auditlog.ErrTampered) {
					return failed(err)
				}
				return err
			}
			if res.Verified {
				fmt.Fprintf(cmd.ErrOrStderr(), "%d entries of %d; checkpoint signature and root verified\n", n, res.Size)
			} else {
				fmt.Fprintf(cmd.ErrOrStderr(), "%d entries of %d; WARNING: not verified (pass --key)\n", n, res.Size)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "log", "", "log directory")
	f.StringVar(&vm, "vm", "", "VM key or ARM resource ID (empty: every entry)")
	f.StringVar(&key, "key", "", "verifier key file: verify what is listed")
	f.StringVar(&typ, "type", "", "only this event type (e.g. io.vigil.vm.verdict.v1 or verdict) or record kind (gap, invalid)")
	f.BoolVar(&asJSON, "json", false, "print one JSON object per entry")
	return cmd
}

// describe is a one-line account of a record.
func describe(r *auditlog.Record) string {
	typ := r.Kind
	if e, err := r.Envelope(); err == nil {
		typ = e.Type + " id " + e.ID
	}
	return fmt.Sprintf("stream %s seq %d stored %s subject %s: %s; %s", r.Stream, r.Seq, r.Stored, r.Subject, typ, summary(r))
}

// summary picks the telling fields of a Vigil event's data.
func summary(r *auditlog.Record) string {
	switch r.Kind {
	case auditlog.KindGap:
		return fmt.Sprintf("sequences %d..%d missing from the stream: %s", r.FirstSeq, r.Seq, r.Reason)
	case auditlog.KindInvalid:
		return "invalid message: " + r.Reason
	}
	e, err := r.Envelope()
	if err != nil {
		return ""
	}
	var data map[string]json.RawMessage
	if json.Unmarshal(e.Data, &data) != nil {
		if r.DataSHA256 != "" {
			return "data left out (" + strconv.Itoa(r.DataSize) + " bytes, " + r.DataSHA256 + ")"
		}
		return ""
	}
	var parts []string
	for _, k := range []string{"kind", "status", "from", "to", "action", "name", "version", "backend", "reason", "code"} {
		if v, ok := data[k]; ok {
			parts = append(parts, k+"="+strings.Trim(string(v), `"`))
		}
	}
	if reasons, ok := data["reasons"]; ok {
		var rs []struct {
			Code string `json:"code"`
		}
		if json.Unmarshal(reasons, &rs) == nil && len(rs) > 0 {
			codes := make([]string, len(rs))
			for i := range rs {
				codes[i] = rs[i].Code
			}
			parts = append(parts, "reasons="+strings.Join(codes, ","))
		}
	}
	if findings, ok := data["findings"]; ok {
		var fs []json.RawMessage
		if json.Unmarshal(findings, &fs) == nil {
			parts = append(parts, "findings="+strconv.Itoa(len(fs)))
		}
	}
	return strings.Join(parts, " ")
}
