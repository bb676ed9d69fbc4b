package fleet

import (
	"context"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// StaticCredential is the token credential for the simulated ARM API, which
// accepts any bearer token.
type StaticCredential struct{}

// GetToken returns a fixed token valid for an hour.
func (StaticCredential) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: "vigil-sim", ExpiresOn: time.Now().Add(time.Hour)}, nil
}
