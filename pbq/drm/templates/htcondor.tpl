#!/bin/sh
# HTCondor job script written by pbq (resources are in the submit description).
${directives}
${body}
