package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// consoleURL is the fleet console's published address.
const consoleURL = "http://127.0.0.1:8088/"

// consoleAnswers checks the fleet console as a user reaches it: refused
// without its token, the overview with the token auth-init made (copied
// out of the auth-console volume). It is skipped ("") when the compose
// file has no console.
func (s *stack) consoleAnswers(ctx context.Context) (string, error) {
	if _, ok := s.p.Services["console"]; !ok {
		return "", nil
	}
	initID, err := s.containerOf(ctx, "auth-init")
	if err != nil {
		return "", err
	}
	dir := filepath.Join(s.work, "console")
	if _, err := docker(ctx, "cp", initID+":/vigil-auth/export/console/console.token", dir); err != nil {
		return "", err
	}
	b, err := os.ReadFile(dir)
	if err != nil {
		return "", err
	}
	token := strings.TrimSpace(string(b))
	get := func(auth string, path ...string) (int, string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(consoleURL, "/")+"/"+strings.Join(path, ""), nil)
		if err != nil {
			return 0, "", err
		}
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		// Redirects are not followed: the console sends a browser without
		// its token to /login.
		client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, err := client.Do(req)
		if err != nil {
			return 0, "", fmt.Errorf("console: %w", err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return resp.StatusCode, string(body), err
	}
	if code, _, err := get(""); err != nil || (code != http.StatusUnauthorized && code != http.StatusSeeOther) {
		return "", fmt.Errorf("the console answered %d (%v) to a request without its token, want 401 or 303 to its login", code, err)
	}
	code, body, err := get(token)
	if err != nil || code != http.StatusOK || !strings.Contains(body, "Vigil console") {
		return "", fmt.Errorf("the console answered %d (%v) with its token, want 200 and the overview", code, err)
	}
	// The console reads the audit log over the auditor's /log/ and
	// verifies it (every 30 s; the first rounds may precede the key).
	verified := regexp.MustCompile(`verified to entry (\d+) at`)
	var audit string
	for deadline := time.Now().Add(75 * time.Second); ; {
		code, page, err := get(token, "audit")
		if err == nil && code == http.StatusOK {
			if m := verified.FindStringSubmatch(page); m != nil && !strings.Contains(page, `id="audit-alarm"`) {
				audit = m[0]
				break
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("the console's audit page shows no verified log (%d, %v):\n%s", code, err, page)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(2 * time.Second): // the console's next round
		}
	}
	return fmt.Sprintf("console refused without its token (to its login), showed the overview with it (%d bytes) and the audit log it read from the auditor's /log/: %s", len(body), audit), nil
}
