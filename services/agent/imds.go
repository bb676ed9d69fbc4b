package agent

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// DefaultIMDSURL is the Azure instance metadata service.
const DefaultIMDSURL = "http://169.254.169.254"

// IMDS paths and the API version of the compute metadata.
const (
	imdsComputePath = "/metadata/instance/compute"
	imdsComputeAPI  = "2021-02-01"
	imdsTHIMPath    = "/metadata/THIM/amd/certification"
	imdsTDQuotePath = "/acc/tdquote"
)

// maxIMDSResponse bounds every response read from the metadata service.
const maxIMDSResponse = 256 << 10

// ErrIMDS is matched (errors.Is) by every error from the metadata service.
var ErrIMDS = errors.New("instance metadata service")

// IMDS is a client of the Azure instance metadata service. It never uses a
// proxy: the service is link-local and answers only from inside the VM.
type IMDS struct {
	// URL is the base URL (default DefaultIMDSURL).
	URL string
	// Client defaults to one without proxy and a 10 s timeout.
	Client *http.Client
}

// NewIMDS returns a client of the service at url ("" for the default).
func NewIMDS(url string) *IMDS {
	if url == "" {
		url = DefaultIMDSURL
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	return &IMDS{URL: strings.TrimRight(url, "/"), Client: &http.Client{Timeout: 10 * time.Second, Transport: tr}}
}

// Compute is the part of the compute metadata the agent uses.
type Compute struct {
	ResourceID        string `json:"resourceId"`
	VMID              string `json:"vmId"`
	Name              string `json:"name"`
	SubscriptionID    string `json:"subscriptionId"`
	ResourceGroupName string `json:"resourceGroupName"`
	Location          string `json:"location"`
	VMSize            string `json:"vmSize"`
}

// Compute returns the VM's compute metadata.
func (c *IMDS) Compute(ctx context.Context) (Compute, error) {
	var out Compute
	if err := c.do(ctx, http.MethodGet, imdsComputePath+"?api-version="+imdsComputeAPI+"&format=json", nil, &out); err != nil {
		return Compute{}, err
	}
	if out.ResourceID == "" {
		return Compute{}, fmt.Errorf("%w: compute metadata without resourceId", ErrIMDS)
	}
	return out, nil
}

// Certification is the THIM answer: the VCEK of the host's AMD processor
// and its chain (ASK, ARK), as PEM.
type Certification struct {
	VCEKCert         string `json:"vcekCert"`
	TCBM             string `json:"tcbm"`
	CertificateChain string `json:"certificateChain"`
	CacheControl     string `json:"cacheControl"`
}

// PEM is the VCEK followed by its chain, as the bundle's vcek field wants it.
func (c Certification) PEM() []byte {
	var b bytes.Buffer
	b.WriteString(strings.TrimSpace(c.VCEKCert))
	b.WriteByte('\n')
	if ch := strings.TrimSpace(c.CertificateChain); ch != "" {
		b.WriteString(ch)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// AMDCertification fetches the VCEK and its chain (SEV-SNP VMs only).
func (c *IMDS) AMDCertification(ctx context.Context) (Certification, error) {
	var out Certification
	if err := c.do(ctx, http.MethodGet, imdsTHIMPath, nil, &out); err != nil {
		return Certification{}, err
	}
	if !strings.Contains(out.VCEKCert, "BEGIN CERTIFICATE") {
		return Certification{}, fmt.Errorf("%w: THIM answer without a VCEK certificate", ErrIMDS)
	}
	return out, nil
}

// TDQuote asks the metadata service to turn a TD report into a TD quote
// (TDX VMs only).
func (c *IMDS) TDQuote(ctx context.Context, tdReport []byte) ([]byte, error) {
	req := struct {
		Report string `json:"report"`
	}{Report: base64.RawURLEncoding.EncodeToString(tdReport)}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	var out struct {
		Quote string `json:"quote"`
	}
	if err := c.do(ctx, http.MethodPost, imdsTDQuotePath, body, &out); err != nil {
		return nil, err
	}
	q, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(out.Quote, "="))
	if err != nil {
		return nil, fmt.Errorf("%w: TD quote is not base64url: %w", ErrIMDS, err)
	}
	if len(q) == 0 {
		return nil, fmt.Errorf("%w: empty TD quote", ErrIMDS)
	}
	return q, nil
}

func (c *IMDS) do(ctx context.Context, method, path string, body []byte, out any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.URL+path, rd)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrIMDS, err)
	}
	req.Header.Set("Metadata", "true")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	client := c.Client
	if client == nil {
		client = NewIMDS(c.URL).Client
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %s %s: %w", ErrIMDS, method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxIMDSResponse+1))
	if err != nil {
		return fmt.Errorf("%w: %s %s: %w", ErrIMDS, method, path, err)
	}
	if len(data) > maxIMDSResponse {
		return fmt.Errorf("%w: %s %s: answer larger than %d bytes", ErrIMDS, method, path, maxIMDSResponse)
	}
	if resp.StatusCode != http.StatusOK {
		msg := strings.TrimSpace(string(data))
		if len(msg) > 200 {
			msg = msg[:200]
		}
		return fmt.Errorf("%w: %s %s: HTTP %d: %s", ErrIMDS, method, path, resp.StatusCode, msg)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%w: %s %s: %w", ErrIMDS, method, path, err)
	}
	return nil
}
