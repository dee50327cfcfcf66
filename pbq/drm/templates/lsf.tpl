#!/bin/sh
# LSF job script written by pbq (resources are passed as bsub options).
${directives}
${body}
