package evidence

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/vigil-cc/vigil/pkg/events"
)

// Format is the evidence bundle format identifier (docs/design.md §8).
const Format = "vigil.evidence/v1"

// Platforms.
const (
	PlatformAzureSNP = "azure-sev-snp"
	PlatformAzureTDX = "azure-tdx"
)

// Bounds on bundle fields (decoded sizes).
const (
	MaxBundleSize    = 256 << 10
	MaxNonceSize     = 64 // a TPM2B_DATA holds at most 64 bytes
	MaxHCLSize       = 16 << 10
	MaxTDQuoteSize   = 16 << 10
	MaxVCEKSize      = 16 << 10
	MaxAttestSize    = 2 << 10
	MaxSignatureSize = 1 << 10
	MaxEventLogSize  = 128 << 10
)

// ErrInvalidBundle is matched (errors.Is) by every bundle parse error.
var ErrInvalidBundle = errors.New("invalid evidence bundle")

// FieldError is a bundle error naming the field at fault.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("evidence bundle: %v", e.Err)
	}
	return fmt.Sprintf("evidence bundle: field %s: %v", e.Field, e.Err)
}

func (e *FieldError) Unwrap() error { return e.Err }

// Is makes every FieldError match ErrInvalidBundle.
func (e *FieldError) Is(target error) bool { return target == ErrInvalidBundle }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Err: fmt.Errorf(format, args...)}
}

// Bundle is a parsed vigil.evidence/v1 bundle with binary fields decoded.
type Bundle struct {
	Format      string
	Platform    string
	VMKey       string
	Nonce       []byte
	CollectedAt time.Time // zero when absent
	HCLReport   []byte
	TDQuote     []byte
	VCEK        []byte // PEM, as given
	TPMQuote    TPMQuote
	EventLog    []byte
}

// TPMQuote is the bundle's tpm_quote object.
type TPMQuote struct {
	Attest    []byte
	Signature []byte
	PCRBank   string
	PCRs      map[int][]byte
}

type wireQuote struct {
	Attest    string            `json:"attest"`
	Signature string            `json:"signature"`
	PCRBank   string            `json:"pcr_bank"`
	PCRs      map[string]string `json:"pcrs"`
}

type wireBundle struct {
	Format      string     `json:"format"`
	Platform    string     `json:"platform"`
	VMKey       string     `json:"vm_key,omitempty"`
	Nonce       string     `json:"nonce"`
	CollectedAt string     `json:"collected_at,omitempty"`
	HCLReport   string     `json:"hcl_report"`
	TDQuote     string     `json:"td_quote,omitempty"`
	VCEK        string     `json:"vcek,omitempty"`
	TPMQuote    *wireQuote `json:"tpm_quote"`
	EventLog    string     `json:"event_log,omitempty"`
}

// PCRBankAlg maps a bundle pcr_bank name to its TPM algorithm.
func PCRBankAlg(bank string) (tpm2.TPMAlgID, int, bool) {
	switch bank {
	case "sha1":
		return tpm2.TPMAlgSHA1, 20, true
	case "sha256":
		return tpm2.TPMAlgSHA256, 32, true
	case "sha384":
		return tpm2.TPMAlgSHA384, 48, true
	case "sha512":
		return tpm2.TPMAlgSHA512, 64, true
	}
	return 0, 0, false
}

func decodeB64(field string, s []byte, required bool, limit int) ([]byte, error) {
	if len(s) == 0 {
		if required {
			return nil, fieldErr(field, "missing")
		}
		return nil, nil
	}
	if base64.StdEncoding.DecodedLen(len(s)) > limit+3 {
		return nil, fieldErr(field, "longer than %d bytes", limit)
	}
	b := make([]byte, base64.StdEncoding.DecodedLen(len(s)))
	n, err := base64.StdEncoding.Strict().Decode(b, s)
	if err != nil {
		return nil, fieldErr(field, "not standard base64 with padding: %v", err)
	}
	if n > limit {
		return nil, fieldErr(field, "%d bytes is longer than %d", n, limit)
	}
	return b[:n:n], nil
}

// fields are a bundle's JSON string values, from either decoder.
type fields struct {
	format, platform, vmKey, nonce, collectedAt []byte
	hcl, tdQuote, vcek, eventLog                []byte
	hasQuote                                    bool
	attest, signature, pcrBank                  []byte
	hasPCRs                                     bool
	pcrs                                        []pcrField
}

type pcrField struct{ key, val []byte }

// ParseBundle parses and validates a bundle. Unknown fields are ignored; a
// missing required field or a bound exceeded is a *FieldError naming it.
func ParseBundle(raw []byte) (*Bundle, error) {
	if len(raw) > MaxBundleSize {
		return nil, fieldErr("", "%d bytes exceeds the %d byte limit", len(raw), MaxBundleSize)
	}
	var f fields
	if err := decodeFast(raw, &f); err != nil {
		var w wireBundle
		if err := decodeWire(raw, &w); err != nil {
			return nil, err
		}
		f = w.fields()
	}
	return f.bundle()
}

// decodeWire decodes with encoding/json.
func decodeWire(raw []byte, w *wireBundle) error {
	*w = wireBundle{}
	if err := json.Unmarshal(raw, w); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return fieldErr(te.Field, "wrong JSON type %s", te.Value)
		}
		return &FieldError{Err: fmt.Errorf("not JSON: %w", err)}
	}
	return nil
}

func (w *wireBundle) fields() fields {
	f := fields{
		format: []byte(w.Format), platform: []byte(w.Platform), vmKey: []byte(w.VMKey), nonce: []byte(w.Nonce),
		collectedAt: []byte(w.CollectedAt), hcl: []byte(w.HCLReport), tdQuote: []byte(w.TDQuote),
		vcek: []byte(w.VCEK), eventLog: []byte(w.EventLog),
	}
	if q := w.TPMQuote; q != nil {
		f.hasQuote = true
		f.attest, f.signature, f.pcrBank = []byte(q.Attest), []byte(q.Signature), []byte(q.PCRBank)
		f.hasPCRs = len(q.PCRs) > 0
		for k, v := range q.PCRs {
			f.pcrs = append(f.pcrs, pcrField{[]byte(k), []byte(v)})
		}
	}
	return f
}

// bundle validates the fields and decodes them.
func (f *fields) bundle() (*Bundle, error) {
	format, platform, vmKey := string(f.format), string(f.platform), string(f.vmKey)
	b := &Bundle{Format: format, Platform: platform, VMKey: vmKey}
	if format == "" {
		return nil, fieldErr("format", "missing")
	}
	if format != Format {
		return nil, fieldErr("format", "%q is not %q", truncate(format, 40), Format)
	}
	switch platform {
	case PlatformAzureSNP, PlatformAzureTDX:
	case "":
		return nil, fieldErr("platform", "missing")
	default:
		return nil, fieldErr("platform", "%q is not supported (want %s or %s)", truncate(platform, 40), PlatformAzureSNP, PlatformAzureTDX)
	}
	if vmKey != "" && !events.ValidVMKey(vmKey) {
		return nil, fieldErr("vm_key", "%q is not a VM key (26 characters of a-z, 2-7)", truncate(vmKey, 40))
	}
	var err error
	if b.Nonce, err = decodeB64("nonce", f.nonce, false, MaxNonceSize); err != nil {
		return nil, err
	}
	if len(f.collectedAt) > 0 {
		if b.CollectedAt, err = time.Parse(time.RFC3339Nano, string(f.collectedAt)); err != nil {
			return nil, fieldErr("collected_at", "not RFC 3339: %v", err)
		}
	}
	if b.HCLReport, err = decodeB64("hcl_report", f.hcl, true, MaxHCLSize); err != nil {
		return nil, err
	}
	if b.TDQuote, err = decodeB64("td_quote", f.tdQuote, platform == PlatformAzureTDX, MaxTDQuoteSize); err != nil {
		return nil, err
	}
	if len(f.vcek) > MaxVCEKSize {
		return nil, fieldErr("vcek", "longer than %d bytes", MaxVCEKSize)
	}
	if len(f.vcek) > 0 {
		b.VCEK = f.vcek
	}
	if b.EventLog, err = decodeB64("event_log", f.eventLog, false, MaxEventLogSize); err != nil {
		return nil, err
	}
	if !f.hasQuote {
		return nil, fieldErr("tpm_quote", "missing")
	}
	if b.TPMQuote.Attest, err = decodeB64("tpm_quote.attest", f.attest, true, MaxAttestSize); err != nil {
		return nil, err
	}
	if b.TPMQuote.Signature, err = decodeB64("tpm_quote.signature", f.signature, true, MaxSignatureSize); err != nil {
		return nil, err
	}
	bank := string(f.pcrBank)
	if bank == "" {
		return nil, fieldErr("tpm_quote.pcr_bank", "missing")
	}
	_, size, ok := PCRBankAlg(bank)
	if !ok {
		return nil, fieldErr("tpm_quote.pcr_bank", "%q is not sha1, sha256, sha384 or sha512", truncate(bank, 40))
	}
	b.TPMQuote.PCRBank = bank
	if !f.hasPCRs || len(f.pcrs) == 0 {
		return nil, fieldErr("tpm_quote.pcrs", "missing")
	}
	if len(f.pcrs) > 24 {
		return nil, fieldErr("tpm_quote.pcrs", "%d entries, at most 24", len(f.pcrs))
	}
	b.TPMQuote.PCRs = make(map[int][]byte, len(f.pcrs))
	vals := make([]byte, len(f.pcrs)*size)
	for _, p := range f.pcrs {
		idx, ok := pcrIndex(p.key)
		if !ok {
			return nil, fieldErr("tpm_quote.pcrs", "key %q is not a PCR index 0..23", truncate(string(p.key), 10))
		}
		k := strconv.Itoa(idx)
		if len(p.val) != 2*size {
			return nil, fieldErr("tpm_quote.pcrs."+k, "%d hex digits, want %d for %s", len(p.val), 2*size, bank)
		}
		if _, dup := b.TPMQuote.PCRs[idx]; dup {
			return nil, fieldErr("tpm_quote.pcrs", "PCR %d given twice", idx)
		}
		v := vals[:size:size]
		vals = vals[size:]
		if _, err := hex.Decode(v, p.val); err != nil {
			return nil, fieldErr("tpm_quote.pcrs."+k, "not hex: %v", err)
		}
		b.TPMQuote.PCRs[idx] = v
	}
	return b, nil
}

// pcrIndex parses a canonical decimal PCR index 0..23.
func pcrIndex(k []byte) (int, bool) {
	switch {
	case len(k) == 1 && k[0] >= '0' && k[0] <= '9':
		return int(k[0] - '0'), true
	case len(k) == 2 && k[0] >= '1' && k[0] <= '2' && k[1] >= '0' && k[1] <= '9':
		i := int(k[0]-'0')*10 + int(k[1]-'0')
		return i, i <= 23
	}
	return 0, false
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// Marshal encodes the bundle as vigil.evidence/v1 JSON.
func (b *Bundle) Marshal() ([]byte, error) {
	enc := base64.StdEncoding.EncodeToString
	w := wireBundle{
		Format:    b.Format,
		Platform:  b.Platform,
		VMKey:     b.VMKey,
		Nonce:     enc(b.Nonce),
		HCLReport: enc(b.HCLReport),
		VCEK:      string(b.VCEK),
		TPMQuote: &wireQuote{
			Attest:    enc(b.TPMQuote.Attest),
			Signature: enc(b.TPMQuote.Signature),
			PCRBank:   b.TPMQuote.PCRBank,
			PCRs:      make(map[string]string, len(b.TPMQuote.PCRs)),
		},
	}
	if w.Format == "" {
		w.Format = Format
	}
	if len(b.TDQuote) > 0 {
		w.TDQuote = enc(b.TDQuote)
	}
	if len(b.EventLog) > 0 {
		w.EventLog = enc(b.EventLog)
	}
	if !b.CollectedAt.IsZero() {
		w.CollectedAt = b.CollectedAt.UTC().Format(time.RFC3339Nano)
	}
	for i, v := range b.TPMQuote.PCRs {
		w.TPMQuote.PCRs[strconv.Itoa(i)] = hex.EncodeToString(v)
	}
	return json.Marshal(&w)
}

// Digest is "sha256:<hex>" of raw bundle bytes, the verdict's evidence digest.
func Digest(raw []byte) string {
	d := sha256.Sum256(raw)
	return "sha256:" + hex.EncodeToString(d[:])
}
