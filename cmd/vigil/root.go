package main

import (
	"github.com/spf13/cobra"
)

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "vigil",
		Short:         "Continuous attestation of Azure Confidential VMs",
		Long:          "Vigil continuously proves that a fleet of Azure Confidential VMs (SEV-SNP and TDX with vTPM)\nis genuine and correctly configured, and cuts off its keys when it is not.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(
		newVersionCmd(),
		newDevCmd(),
		newSimCmd(),
		newEventsCmd(),
		newEvidenceCmd(),
		newAuditCmd(),
		newKeyguardCmd(),
		newPolicyCmd(),
		newAuthCmd(),
		newProvisionCmd(),
		newAlertsCmd(),
	)
	return root
}
